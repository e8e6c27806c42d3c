/*
 * stratacache.engine._accel: the optional compiled accelerator of the L0 engine.
 *
 * The pure-Python engine (store.py, sketch.py) is the reference and works without this module.
 * When it is built, three hot pieces are swapped for these C versions with the same behaviour:
 *
 *   Entry     the record of one cached key (the slots store.py's _Entry has);
 *   Sketch    the count-min sketch of 4-bit counters (sketch.py's FrequencySketch);
 *   ReadPath  Store.get's hit path: one dict look-up, a lazy expiry check, an append to the read
 *             buffer; everything unusual (an expired entry, a full buffer) calls back into Python.
 *
 * Everything runs under the GIL and calls back into Python only at the end of an operation, so the
 * store's invariants hold whenever Python code can observe them. No pickling, no I/O.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------------------------ Entry */

typedef struct {
    PyObject_HEAD
    PyObject *key;
    PyObject *value;
    PyObject *bucket;      /* the timer-wheel bucket (a dict) holding the entry, or None */
    Py_ssize_t weight;
    double expires;        /* clock seconds; 0.0 means no expiry */
    int queue;             /* 0 window, 1 probation, 2 protected, 3 removed */
} EntryObject;

static PyTypeObject EntryType;

static PyObject *
Entry_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *key, *value;
    Py_ssize_t weight;
    double expires;
    static char *kwlist[] = {"key", "value", "weight", "expires", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOnd", kwlist, &key, &value, &weight, &expires))
        return NULL;
    EntryObject *self = (EntryObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->key = Py_NewRef(key);
    self->value = Py_NewRef(value);
    self->bucket = Py_NewRef(Py_None);
    self->weight = weight;
    self->expires = expires;
    self->queue = 0;
    return (PyObject *)self;
}

static int
Entry_traverse(EntryObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->key);
    Py_VISIT(self->value);
    Py_VISIT(self->bucket);
    return 0;
}

static int
Entry_clear(EntryObject *self)
{
    Py_CLEAR(self->key);
    Py_CLEAR(self->value);
    Py_CLEAR(self->bucket);
    return 0;
}

static void
Entry_dealloc(EntryObject *self)
{
    PyObject_GC_UnTrack(self);
    Entry_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef Entry_members[] = {
    {"key", T_OBJECT, offsetof(EntryObject, key), 0, "the key"},
    {"value", T_OBJECT, offsetof(EntryObject, value), 0, "the value"},
    {"bucket", T_OBJECT, offsetof(EntryObject, bucket), 0, "timer-wheel bucket or None"},
    {"weight", T_PYSSIZET, offsetof(EntryObject, weight), 0, "the weight"},
    {"expires", T_DOUBLE, offsetof(EntryObject, expires), 0, "expiry time, 0.0 for none"},
    {"queue", T_INT, offsetof(EntryObject, queue), 0, "the policy segment"},
    {NULL}
};

static PyTypeObject EntryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stratacache.engine._accel.Entry",
    .tp_doc = "One cached key: key, value, weight, expiry, policy segment, timer bucket.",
    .tp_basicsize = sizeof(EntryObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Entry_new,
    .tp_traverse = (traverseproc)Entry_traverse,
    .tp_clear = (inquiry)Entry_clear,
    .tp_dealloc = (destructor)Entry_dealloc,
    .tp_members = Entry_members,
};

/* ----------------------------------------------------------------------------------- Sketch */

#define DEPTH 4
#define MAX_COUNT 15
#define MAX_ROW_BITS 32

typedef struct {
    PyObject_HEAD
    unsigned char *table;
    uint64_t mask;
    Py_ssize_t width;
    Py_ssize_t capacity;
    Py_ssize_t sample_size;
    Py_ssize_t additions;
    uint64_t seed_a;
    uint64_t seed_b;
} SketchObject;

/* splitmix64's finaliser: every input bit reaches every output bit. */
static inline uint64_t
mix64(uint64_t x)
{
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static int
Sketch_init(SketchObject *self, PyObject *args, PyObject *kwds)
{
    Py_ssize_t capacity;
    PyObject *seed_obj = NULL;
    static char *kwlist[] = {"capacity", "seed", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n|$O", kwlist, &capacity, &seed_obj))
        return -1;
    uint64_t seed = 0;
    if (seed_obj != NULL) {
        seed = PyLong_AsUnsignedLongLongMask(seed_obj);
        if (seed == (uint64_t)-1 && PyErr_Occurred())
            return -1;
    }
    if (capacity < 16)
        capacity = 16;
    int bits = 0;
    while (bits < MAX_ROW_BITS && ((Py_ssize_t)1 << bits) < capacity)
        bits++;
    Py_ssize_t width = (Py_ssize_t)1 << bits;
    unsigned char *table = PyMem_Calloc((size_t)(DEPTH * width), 1);
    if (table == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyMem_Free(self->table);
    self->table = table;
    self->width = width;
    self->mask = (uint64_t)(width - 1);
    self->capacity = capacity;
    self->sample_size = 10 * capacity;
    self->additions = 0;
    self->seed_a = mix64(seed ^ 0x9E3779B97F4A7C15ULL);
    self->seed_b = mix64(seed ^ 0xC2B2AE3D27D4EB4FULL);
    return 0;
}

static void
Sketch_dealloc(SketchObject *self)
{
    PyMem_Free(self->table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
sketch_indexes(SketchObject *self, PyObject *arg, Py_ssize_t idx[DEPTH])
{
    long long h = PyLong_AsLongLong(arg);
    if (h == -1 && PyErr_Occurred())
        return -1;
    uint64_t a = mix64((uint64_t)h ^ self->seed_a);
    uint64_t b = mix64((uint64_t)h ^ self->seed_b);
    Py_ssize_t w = self->width;
    idx[0] = (Py_ssize_t)(a & self->mask);
    idx[1] = w + (Py_ssize_t)((a >> 32) & self->mask);
    idx[2] = 2 * w + (Py_ssize_t)(b & self->mask);
    idx[3] = 3 * w + (Py_ssize_t)((b >> 32) & self->mask);
    return 0;
}

static void
sketch_halve(SketchObject *self)
{
    Py_ssize_t n = DEPTH * self->width;
    for (Py_ssize_t i = 0; i < n; i++)
        self->table[i] >>= 1;
    self->additions /= 2;
}

static PyObject *
Sketch_increment(SketchObject *self, PyObject *arg)
{
    Py_ssize_t idx[DEPTH];
    if (sketch_indexes(self, arg, idx) < 0)
        return NULL;
    for (int i = 0; i < DEPTH; i++) {
        if (self->table[idx[i]] < MAX_COUNT)
            self->table[idx[i]]++;
    }
    if (++self->additions >= self->sample_size)
        sketch_halve(self);
    Py_RETURN_NONE;
}

static PyObject *
Sketch_frequency(SketchObject *self, PyObject *arg)
{
    Py_ssize_t idx[DEPTH];
    if (sketch_indexes(self, arg, idx) < 0)
        return NULL;
    unsigned char low = MAX_COUNT;
    for (int i = 0; i < DEPTH; i++) {
        if (self->table[idx[i]] < low)
            low = self->table[idx[i]];
    }
    return PyLong_FromLong(low);
}

static PyObject *
Sketch_halve(SketchObject *self, PyObject *Py_UNUSED(ignored))
{
    sketch_halve(self);
    Py_RETURN_NONE;
}

static PyObject *
Sketch_clear(SketchObject *self, PyObject *Py_UNUSED(ignored))
{
    memset(self->table, 0, (size_t)(DEPTH * self->width));
    self->additions = 0;
    Py_RETURN_NONE;
}

static PyObject *
Sketch_get_capacity(SketchObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->capacity);
}

static PyObject *
Sketch_get_sample_size(SketchObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->sample_size);
}

static PyMethodDef Sketch_methods[] = {
    {"increment", (PyCFunction)Sketch_increment, METH_O, "Count one more access of a key hash."},
    {"frequency", (PyCFunction)Sketch_frequency, METH_O, "Estimated recent count (0-15)."},
    {"halve", (PyCFunction)Sketch_halve, METH_NOARGS, "Age every counter by half."},
    {"clear", (PyCFunction)Sketch_clear, METH_NOARGS, "Forget everything."},
    {NULL}
};

static PyGetSetDef Sketch_getset[] = {
    {"capacity", (getter)Sketch_get_capacity, NULL, "distinct keys sized for", NULL},
    {"sample_size", (getter)Sketch_get_sample_size, NULL, "increments between halvings", NULL},
    {NULL}
};

static PyTypeObject SketchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stratacache.engine._accel.Sketch",
    .tp_doc = "Count-min sketch of 4-bit counters with periodic halving.",
    .tp_basicsize = sizeof(SketchObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Sketch_init,
    .tp_dealloc = (destructor)Sketch_dealloc,
    .tp_methods = Sketch_methods,
    .tp_getset = Sketch_getset,
};

/* --------------------------------------------------------------------------------- ReadPath */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *data;         /* dict: key -> Entry */
    PyObject *reads;        /* list: the read buffer */
    PyObject *clock;        /* callable -> float seconds */
    PyObject *on_expired;   /* callable(entry): reclaim an entry found expired */
    PyObject *on_full;      /* callable(): drain a full read buffer */
    PyObject *invalid_key;  /* the exception class for unhashable keys */
    Py_ssize_t limit;
    Py_ssize_t misses;
} ReadPathObject;

static PyObject *
readpath_get(ReadPathObject *self, PyObject *key, PyObject *deflt)
{
    PyObject *found = PyDict_GetItemWithError(self->data, key); /* borrowed */
    if (found == NULL) {
        if (PyErr_Occurred()) {
            if (PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                PyErr_Format(self->invalid_key, "unhashable key of type %.100s",
                             Py_TYPE(key)->tp_name);
            }
            return NULL;
        }
        self->misses++;
        return Py_NewRef(deflt);
    }
    if (!Py_IS_TYPE(found, &EntryType)) {
        PyErr_SetString(PyExc_SystemError, "stratacache: foreign object in the store's table");
        return NULL;
    }
    EntryObject *entry = (EntryObject *)Py_NewRef(found);
    PyObject *result = NULL;
    if (entry->expires != 0.0) {
        PyObject *now_obj = PyObject_CallNoArgs(self->clock);
        if (now_obj == NULL)
            goto done;
        double now = PyFloat_AsDouble(now_obj);
        Py_DECREF(now_obj);
        if (now == -1.0 && PyErr_Occurred())
            goto done;
        if (entry->expires <= now) {
            PyObject *r = PyObject_CallOneArg(self->on_expired, (PyObject *)entry);
            if (r == NULL)
                goto done;
            Py_DECREF(r);
            self->misses++;
            result = Py_NewRef(deflt);
            goto done;
        }
    }
    if (PyList_Append(self->reads, (PyObject *)entry) < 0)
        goto done;
    /* Take the value before draining: the drain may run other threads' code via the listener. */
    result = Py_NewRef(entry->value);
    if (PyList_GET_SIZE(self->reads) >= self->limit) {
        PyObject *r = PyObject_CallNoArgs(self->on_full);
        if (r == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        Py_DECREF(r);
    }
done:
    Py_DECREF(entry);
    return result;
}

static PyObject *
ReadPath_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    ReadPathObject *self = (ReadPathObject *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *key = NULL, *deflt = Py_None;
    if (nargs >= 1)
        key = args[0];
    if (nargs >= 2)
        deflt = args[1];
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "get() takes at most 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i);
            PyObject *val = args[nargs + i];
            if (PyUnicode_CompareWithASCIIString(name, "key") == 0 && key == NULL)
                key = val;
            else if (PyUnicode_CompareWithASCIIString(name, "default") == 0 && nargs < 2)
                deflt = val;
            else {
                PyErr_Format(PyExc_TypeError, "get() got an unexpected keyword argument '%U'",
                             name);
                return NULL;
            }
        }
    }
    if (key == NULL) {
        PyErr_SetString(PyExc_TypeError, "get() missing required argument 'key'");
        return NULL;
    }
    return readpath_get(self, key, deflt);
}

static PyObject *
ReadPath_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *data, *reads, *clock, *on_expired, *on_full, *invalid_key;
    Py_ssize_t limit;
    static char *kwlist[] = {"data", "reads", "clock", "on_expired", "on_full", "invalid_key",
                             "limit", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!OOOOn", kwlist, &PyDict_Type, &data,
                                     &PyList_Type, &reads, &clock, &on_expired, &on_full,
                                     &invalid_key, &limit))
        return NULL;
    ReadPathObject *self = (ReadPathObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = ReadPath_vectorcall;
    self->data = Py_NewRef(data);
    self->reads = Py_NewRef(reads);
    self->clock = Py_NewRef(clock);
    self->on_expired = Py_NewRef(on_expired);
    self->on_full = Py_NewRef(on_full);
    self->invalid_key = Py_NewRef(invalid_key);
    self->limit = limit;
    self->misses = 0;
    return (PyObject *)self;
}

static int
ReadPath_traverse(ReadPathObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->data);
    Py_VISIT(self->reads);
    Py_VISIT(self->clock);
    Py_VISIT(self->on_expired);
    Py_VISIT(self->on_full);
    Py_VISIT(self->invalid_key);
    return 0;
}

static int
ReadPath_clear(ReadPathObject *self)
{
    Py_CLEAR(self->data);
    Py_CLEAR(self->reads);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->on_expired);
    Py_CLEAR(self->on_full);
    Py_CLEAR(self->invalid_key);
    return 0;
}

static void
ReadPath_dealloc(ReadPathObject *self)
{
    PyObject_GC_UnTrack(self);
    ReadPath_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef ReadPath_members[] = {
    {"misses", T_PYSSIZET, offsetof(ReadPathObject, misses), 0, "lookups that missed"},
    {NULL}
};

static PyTypeObject ReadPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stratacache.engine._accel.ReadPath",
    .tp_doc = "Store.get's hit path: get(key, default=None).",
    .tp_basicsize = sizeof(ReadPathObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = ReadPath_new,
    .tp_traverse = (traverseproc)ReadPath_traverse,
    .tp_clear = (inquiry)ReadPath_clear,
    .tp_dealloc = (destructor)ReadPath_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(ReadPathObject, vectorcall),
    .tp_members = ReadPath_members,
};

/* ----------------------------------------------------------------------------------- module */

static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "stratacache.engine._accel",
    .m_doc = "Compiled accelerator for the L0 engine (optional; the pure-Python engine is the reference).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__accel(void)
{
    if (PyType_Ready(&EntryType) < 0 || PyType_Ready(&SketchType) < 0 ||
        PyType_Ready(&ReadPathType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&accel_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Entry", (PyObject *)&EntryType) < 0 ||
        PyModule_AddObjectRef(m, "Sketch", (PyObject *)&SketchType) < 0 ||
        PyModule_AddObjectRef(m, "ReadPath", (PyObject *)&ReadPathType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
