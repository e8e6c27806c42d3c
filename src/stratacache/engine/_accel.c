/*
 * stratacache.engine._accel: the optional compiled accelerator of the L0 engine.
 *
 * The pure-Python engine (policy.py, sketch.py, store.py) is the reference and works without this
 * module. When it is built, the store runs on these C versions, which take the same steps:
 *
 *   Entry      one cached key; it also carries the links of the policy segment it is in, so a
 *              segment is an intrusive doubly linked list instead of an OrderedDict, and it is not
 *              tracked by the garbage collector (Policy reports its references instead);
 *   Sketch     the count-min sketch of 4-bit counters, hashing keys exactly as sketch.py does;
 *   Lock       a plain mutex that C can take without calling into Python (the store's lock);
 *   Policy     policy.py's Policy: window, probation, protected, admission, the adaptive window,
 *              the read buffer;
 *   ReadPath   Store.get: one dict look-up, a lazy expiry check, a slot in the read buffer;
 *   WritePath  Store.set: key, TTL and weight checks, then Policy.put under the lock. Anything
 *              unusual (a bad key, a custom weigher's error, a keyword argument) goes to the
 *              Python method, so every error message is written once.
 *
 * Everything runs under the GIL. A change to the policy's structures calls no Python code in its
 * middle except where the Python reference does too (the timer wheel's schedule, the rng, a key's
 * own __hash__/__eq__), and those run under the store's lock, so other writers wait; lock-free
 * readers only add to the read buffer. No pickling, no I/O.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <pythread.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define Q_WINDOW 0
#define Q_PROBATION 1
#define Q_PROTECTED 2
#define Q_REMOVED 3

/* The constants of policy.py; a test checks they agree. */
#define READ_BUFFER 256
#define READ_SAMPLE 4
#define EXACT_READS 1024
#define INITIAL_WINDOW 0.01
#define GHOST_SHARE 0.12
#define GROW_STEP 1.0
#define SHRINK_STEP 1.5
#define GROW_REACH 2
#define REFUSED_FLOOR_NUM 2 /* policy.py's _REFUSED_FLOOR, as a fraction */
#define REFUSED_FLOOR_DEN 3
#define PROTECTED_SHARE 0.80
#define TRANSFER_LIMIT 1000
#define HASHDOS_THRESHOLD 6
#define COLD_INSERTS 4
#define SHADOW_KEYS 1024
#define SHADOW_PERIOD 2
#define SHADOW_LEAD 20
#define SHADOW_MEMORY 3

/* ------------------------------------------------------------------------------------ Entry */

/* The expiry of an entry with a TTL, and the timer-wheel bucket (a dict) it is filed in. Only
 * entries with a TTL have one, so the others are 16 bytes lighter. */
typedef struct {
    double expires;     /* clock seconds; 0.0 means no expiry */
    PyObject *bucket;   /* owned, or NULL for None */
} Timer;

typedef struct EntryObject {
    PyObject_HEAD
    PyObject *key;
    PyObject *value;
    struct EntryObject *prev;  /* neighbours in the policy segment; borrowed (the table owns) */
    struct EntryObject *next;
    long long weight;
    /* A Timer * (or NULL) with the policy segment (Q_WINDOW...Q_REMOVED) in its two low bits:
     * allocations are at least 8-byte aligned, so those bits are free. 64 bytes an entry. */
    uintptr_t timer_queue;
} EntryObject;

static PyTypeObject EntryType;

#define QUEUE_MASK ((uintptr_t)3)

static inline int
QUEUE(EntryObject *e)
{
    return (int)(e->timer_queue & QUEUE_MASK);
}

static inline void
set_queue(EntryObject *e, int queue)
{
    e->timer_queue = (e->timer_queue & ~QUEUE_MASK) | (uintptr_t)queue;
}

static inline Timer *
TIMER(EntryObject *e)
{
    return (Timer *)(e->timer_queue & ~QUEUE_MASK);
}

static inline double
EXPIRES(EntryObject *e)
{
    Timer *t = TIMER(e);
    return t != NULL ? t->expires : 0.0;
}

static Timer *
ensure_timer(EntryObject *e)
{
    Timer *t = TIMER(e);
    if (t != NULL)
        return t;
    t = PyMem_Malloc(sizeof(Timer));
    if (t == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    t->expires = 0.0;
    t->bucket = NULL;
    e->timer_queue = (uintptr_t)t | (e->timer_queue & QUEUE_MASK);
    return t;
}

/* Drop the timer record once it holds nothing. */
static inline void
release_timer(EntryObject *e)
{
    Timer *t = TIMER(e);
    if (t != NULL && t->expires == 0.0 && t->bucket == NULL) {
        e->timer_queue &= QUEUE_MASK;
        PyMem_Free(t);
    }
}

static int
set_expires(EntryObject *e, double expires)
{
    if (expires == 0.0) {
        Timer *t = TIMER(e);
        if (t != NULL) {
            t->expires = 0.0;
            release_timer(e);
        }
        return 0;
    }
    Timer *t = ensure_timer(e);
    if (t == NULL)
        return -1;
    t->expires = expires;
    return 0;
}

/* Take the entry's bucket out of it: a new reference, or NULL when it has none. */
static inline PyObject *
take_bucket(EntryObject *e)
{
    Timer *t = TIMER(e);
    if (t == NULL || t->bucket == NULL)
        return NULL;
    PyObject *bucket = t->bucket;
    t->bucket = NULL;
    release_timer(e);
    return bucket;
}

static EntryObject *
entry_create(PyObject *key, PyObject *value, long long weight, double expires)
{
    EntryObject *self = PyObject_New(EntryObject, &EntryType);
    if (self == NULL)
        return NULL;
    self->key = Py_NewRef(key);
    self->value = Py_NewRef(value);
    self->prev = self->next = NULL;
    self->weight = weight;
    self->timer_queue = Q_WINDOW;
    if (set_expires(self, expires) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return self;
}

static PyObject *
Entry_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *key, *value;
    long long weight;
    double expires;
    static char *kwlist[] = {"key", "value", "weight", "expires", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOLd", kwlist, &key, &value, &weight, &expires))
        return NULL;
    return (PyObject *)entry_create(key, value, weight, expires);
}

static void
Entry_dealloc(EntryObject *self)
{
    Timer *t = TIMER(self);
    self->timer_queue = 0;
    if (t != NULL) {
        Py_XDECREF(t->bucket);
        PyMem_Free(t);
    }
    Py_CLEAR(self->key);
    Py_CLEAR(self->value);
    PyObject_Del(self);
}

static PyObject *
Entry_get_key(EntryObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->key != NULL ? self->key : Py_None);
}

static PyObject *
Entry_get_value(EntryObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->value != NULL ? self->value : Py_None);
}

static PyObject *
Entry_get_bucket(EntryObject *self, void *Py_UNUSED(closure))
{
    Timer *t = TIMER(self);
    return Py_NewRef(t != NULL && t->bucket != NULL ? t->bucket : Py_None);
}

static int
Entry_set_bucket(EntryObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete the bucket");
        return -1;
    }
    if (value == Py_None) {
        PyObject *old = take_bucket(self);
        Py_XDECREF(old);
        return 0;
    }
    Timer *t = ensure_timer(self);
    if (t == NULL)
        return -1;
    Py_XSETREF(t->bucket, Py_NewRef(value));
    return 0;
}

static PyObject *
Entry_get_expires(EntryObject *self, void *Py_UNUSED(closure))
{
    return PyFloat_FromDouble(EXPIRES(self));
}

static int
Entry_set_expires(EntryObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete the expiry");
        return -1;
    }
    double expires = PyFloat_AsDouble(value);
    if (expires == -1.0 && PyErr_Occurred())
        return -1;
    return set_expires(self, expires);
}

static PyObject *
Entry_get_queue(EntryObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(QUEUE(self));
}

static PyGetSetDef Entry_getset[] = {
    {"key", (getter)Entry_get_key, NULL, "the key", NULL},
    {"value", (getter)Entry_get_value, NULL, "the value", NULL},
    {"bucket", (getter)Entry_get_bucket, (setter)Entry_set_bucket, "timer-wheel bucket or None",
     NULL},
    {"expires", (getter)Entry_get_expires, (setter)Entry_set_expires,
     "expiry time, 0.0 for none", NULL},
    {"queue", (getter)Entry_get_queue, NULL, "the policy segment", NULL},
    {NULL}
};

static PyMemberDef Entry_members[] = {
    {"weight", T_LONGLONG, offsetof(EntryObject, weight), READONLY, "the weight"},
    {NULL}
};

static PyTypeObject EntryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stratacache.engine._accel.Entry",
    .tp_doc = "One cached key: key, value, weight, expiry, policy segment, timer bucket.",
    .tp_basicsize = sizeof(EntryObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Entry_new,
    .tp_dealloc = (destructor)Entry_dealloc,
    .tp_members = Entry_members,
    .tp_getset = Entry_getset,
};

/* ----------------------------------------------------------------------------------- Sketch */

#define DEPTH 4
#define MAX_COUNT 15
#define MAX_ROW_BITS 32
#define COUNTERS_PER_SLOT_BITS 2 /* sketch.py's: 4 counters a row per slot, two to a byte */

typedef struct {
    PyObject_HEAD
    unsigned char *table;   /* DEPTH * width 4-bit counters, two to a byte (low nibble first) */
    uint64_t mask;
    Py_ssize_t width;       /* counters per row */
    Py_ssize_t capacity;
    Py_ssize_t sample_size;
    Py_ssize_t additions;
    Py_hash_t seed_a_hash;  /* hash() of the seeds as Python ints: the second lane of the pair */
    Py_hash_t seed_b_hash;
} SketchObject;

static PyTypeObject SketchType;

/* hash() of the Python int whose value is h (CPython's int hash: h modulo 2**61 - 1, sign kept). */
static inline Py_hash_t
int_hash(Py_hash_t h)
{
    const uint64_t modulus = ((uint64_t)1 << 61) - 1;
    int negative = h < 0;
    uint64_t magnitude = negative ? (uint64_t)0 - (uint64_t)h : (uint64_t)h;
    Py_hash_t r = (Py_hash_t)(magnitude % modulus);
    if (negative)
        r = -r;
    return r == -1 ? -2 : r;
}

/* hash((a, b)) for two Python ints whose own hashes are lane_a and lane_b: CPython's tuple hash
 * (an xxHash round per item), so the indexes below are the very numbers sketch.py computes. */
static inline Py_hash_t
pair_hash(Py_hash_t lane_a, Py_hash_t lane_b)
{
    const uint64_t prime1 = 11400714785074694791ULL;
    const uint64_t prime2 = 14029467366897019727ULL;
    const uint64_t prime5 = 2870177450012600261ULL;
    uint64_t acc = prime5;
    acc += (uint64_t)lane_a * prime2;
    acc = (acc << 31) | (acc >> 33);
    acc *= prime1;
    acc += (uint64_t)lane_b * prime2;
    acc = (acc << 31) | (acc >> 33);
    acc *= prime1;
    acc += 2 ^ (prime5 ^ 3527539UL);
    if (acc == (uint64_t)-1)
        return 1546275796;
    return (Py_hash_t)acc;
}

static inline void
sketch_indexes(SketchObject *self, Py_hash_t key_hash, Py_ssize_t idx[DEPTH])
{
    /* As sketch.py: a = hash((hash((key_hash, seed_a)), seed_a)), b = hash((a, seed_b)). */
    Py_hash_t inner = pair_hash(int_hash(key_hash), self->seed_a_hash);
    int64_t a = (int64_t)pair_hash(int_hash(inner), self->seed_a_hash);
    int64_t b = (int64_t)pair_hash(int_hash((Py_hash_t)a), self->seed_b_hash);
    Py_ssize_t w = self->width;
    /* Arithmetic shifts of signed values, as Python's >> on negative ints. */
    idx[0] = (Py_ssize_t)((uint64_t)a & self->mask);
    idx[1] = w + (Py_ssize_t)((uint64_t)(a >> 32) & self->mask);
    idx[2] = 2 * w + (Py_ssize_t)((uint64_t)b & self->mask);
    idx[3] = 3 * w + (Py_ssize_t)((uint64_t)(b >> 32) & self->mask);
}

static void
sketch_halve(SketchObject *self)
{
    Py_ssize_t n = DEPTH * self->width / 2;
    for (Py_ssize_t i = 0; i < n; i++)
        self->table[i] = (unsigned char)((self->table[i] >> 1) & 0x77);
    self->additions /= 2;
}

static inline void
sketch_increment(SketchObject *self, Py_hash_t key_hash)
{
    Py_ssize_t idx[DEPTH];
    sketch_indexes(self, key_hash, idx);
    for (int i = 0; i < DEPTH; i++) {
        unsigned char *byte = &self->table[idx[i] >> 1];
        int shift = (int)(idx[i] & 1) << 2;
        if (((*byte >> shift) & MAX_COUNT) < MAX_COUNT)
            *byte = (unsigned char)(*byte + (1 << shift));
    }
    if (++self->additions >= self->sample_size)
        sketch_halve(self);
}

static inline int
sketch_frequency(SketchObject *self, Py_hash_t key_hash)
{
    Py_ssize_t idx[DEPTH];
    sketch_indexes(self, key_hash, idx);
    int low = MAX_COUNT;
    for (int i = 0; i < DEPTH; i++) {
        int count = (self->table[idx[i] >> 1] >> ((int)(idx[i] & 1) << 2)) & MAX_COUNT;
        if (count < low)
            low = count;
    }
    return low;
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
        seed = PyLong_AsUnsignedLongLongMask(seed_obj);  /* seed & (2**64 - 1) */
        if (seed == (uint64_t)-1 && PyErr_Occurred())
            return -1;
    }
    if (capacity < 16)
        capacity = 16;
    int bits = 0;
    while (bits < MAX_ROW_BITS && ((Py_ssize_t)1 << bits) < capacity)
        bits++;
    bits = bits + COUNTERS_PER_SLOT_BITS > MAX_ROW_BITS ? MAX_ROW_BITS : bits + COUNTERS_PER_SLOT_BITS;
    Py_ssize_t width = (Py_ssize_t)1 << bits;
    /* As sketch.py: seed_a = seed mod 2**64, seed_b = (seed * golden + 1) mod 2**64. */
    uint64_t seed_b = seed * 0x9E3779B97F4A7C15ULL + 1;
    PyObject *a = PyLong_FromUnsignedLongLong(seed);
    PyObject *b = a == NULL ? NULL : PyLong_FromUnsignedLongLong(seed_b);
    if (b == NULL) {
        Py_XDECREF(a);
        return -1;
    }
    Py_hash_t ha = PyObject_Hash(a), hb = PyObject_Hash(b);
    Py_DECREF(a);
    Py_DECREF(b);
    if (ha == -1 || hb == -1)
        return -1;
    unsigned char *table = PyMem_Calloc((size_t)(DEPTH * width / 2), 1);
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
    self->seed_a_hash = ha;
    self->seed_b_hash = hb;
    return 0;
}

static void
Sketch_dealloc(SketchObject *self)
{
    PyMem_Free(self->table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
hash_of_int_arg(PyObject *arg, Py_hash_t *out)
{
    if (!PyLong_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "a key hash must be an int, not %.100s",
                     Py_TYPE(arg)->tp_name);
        return -1;
    }
    /* The first lane is hash(key_hash); any int works, as in sketch.py. */
    Py_hash_t h = PyObject_Hash(arg);
    if (h == -1)
        return -1;
    *out = h;
    return 0;
}

static PyObject *
Sketch_increment(SketchObject *self, PyObject *arg)
{
    Py_hash_t lane;
    if (hash_of_int_arg(arg, &lane) < 0)
        return NULL;
    /* sketch_increment takes the key's hash and hashes it as an int; lane already is that, and
     * int_hash(lane) == lane for every value hash() of an int can return. */
    sketch_increment(self, lane);
    Py_RETURN_NONE;
}

static PyObject *
Sketch_frequency(SketchObject *self, PyObject *arg)
{
    Py_hash_t lane;
    if (hash_of_int_arg(arg, &lane) < 0)
        return NULL;
    return PyLong_FromLong(sketch_frequency(self, lane));
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
    memset(self->table, 0, (size_t)(DEPTH * self->width / 2));
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

static SketchObject *
sketch_create(Py_ssize_t capacity, PyObject *seed)
{
    PyObject *args = Py_BuildValue("(n)", capacity);
    if (args == NULL)
        return NULL;
    PyObject *kwargs = Py_BuildValue("{s:O}", "seed", seed);
    if (kwargs == NULL) {
        Py_DECREF(args);
        return NULL;
    }
    PyObject *sketch = PyObject_Call((PyObject *)&SketchType, args, kwargs);
    Py_DECREF(args);
    Py_DECREF(kwargs);
    return (SketchObject *)sketch;
}

/* ------------------------------------------------------------------------------------- Lock */

/* A mutex for code that always holds the GIL. The GIL already makes "test, then set" of a flag
 * atomic between threads, so taking a free lock is one store, with no atomic instruction and no
 * system call (a threading.Lock's semaphore cost a set an eighth of its time). Only a thread that
 * finds the lock taken drops the GIL and sleeps on a semaphore, which a release posts to while
 * anyone waits; a woken thread checks the flag again. */
typedef struct {
    PyObject_HEAD
    PyThread_type_lock wakeup;  /* taken at rest: waiters sleep on it until a release posts */
    int waiters;
    char locked;
} LockObject;

static inline int
lock_try(LockObject *self)
{
    if (self->locked)
        return 0;
    self->locked = 1;
    return 1;
}

static void
lock_acquire(LockObject *self)
{
    while (self->locked) {
        self->waiters++;
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(self->wakeup, WAIT_LOCK);
        Py_END_ALLOW_THREADS
        self->waiters--;
    }
    self->locked = 1;
}

static inline void
lock_release(LockObject *self)
{
    self->locked = 0;
    if (self->waiters)
        PyThread_release_lock(self->wakeup);
}

static PyObject *
Lock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (!_PyArg_NoPositional("Lock", args) || !_PyArg_NoKeywords("Lock", kwds))
        return NULL;
    LockObject *self = (LockObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->wakeup = PyThread_allocate_lock();
    if (self->wakeup == NULL) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_MemoryError, "cannot allocate a lock");
        return NULL;
    }
    PyThread_acquire_lock(self->wakeup, WAIT_LOCK);  /* at rest it is taken: waiters sleep */
    self->waiters = 0;
    self->locked = 0;
    return (PyObject *)self;
}

static void
Lock_dealloc(LockObject *self)
{
    if (self->wakeup != NULL) {
        PyThread_release_lock(self->wakeup);
        PyThread_free_lock(self->wakeup);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Lock_acquire(LockObject *self, PyObject *args, PyObject *kwds)
{
    int blocking = 1;
    static char *kwlist[] = {"blocking", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p", kwlist, &blocking))
        return NULL;
    if (!blocking)
        return PyBool_FromLong(lock_try(self));
    lock_acquire(self);
    Py_RETURN_TRUE;
}

static PyObject *
Lock_release(LockObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->locked) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return NULL;
    }
    lock_release(self);
    Py_RETURN_NONE;
}

static PyObject *
Lock_enter(LockObject *self, PyObject *Py_UNUSED(ignored))
{
    lock_acquire(self);
    Py_RETURN_TRUE;
}

static PyObject *
Lock_exit(LockObject *self, PyObject *Py_UNUSED(args))
{
    return Lock_release(self, NULL);
}

static PyObject *
Lock_locked(LockObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->locked);
}

static PyMethodDef Lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Lock_acquire, METH_VARARGS | METH_KEYWORDS,
     "Take the lock; with blocking=False, only if it is free. Returns whether it was taken."},
    {"release", (PyCFunction)Lock_release, METH_NOARGS, "Release the lock."},
    {"locked", (PyCFunction)Lock_locked, METH_NOARGS, "Whether the lock is held."},
    {"__enter__", (PyCFunction)Lock_enter, METH_NOARGS, "Take the lock."},
    {"__exit__", (PyCFunction)Lock_exit, METH_VARARGS, "Release the lock."},
    {NULL}
};

static PyTypeObject LockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stratacache.engine._accel.Lock",
    .tp_doc = "A mutex like threading.Lock that the compiled paths take without calling Python.",
    .tp_basicsize = sizeof(LockObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Lock_new,
    .tp_dealloc = (destructor)Lock_dealloc,
    .tp_methods = Lock_methods,
};

/* ----------------------------------------------------------------------------------- Policy */

typedef struct {
    EntryObject *head;  /* least recently used */
    EntryObject *tail;  /* most recently used */
    Py_ssize_t count;
} Segment;

static inline void
segment_push(Segment *s, EntryObject *e)
{
    e->next = NULL;
    e->prev = s->tail;
    if (s->tail != NULL)
        s->tail->next = e;
    else
        s->head = e;
    s->tail = e;
    s->count++;
}

static inline void
segment_remove(Segment *s, EntryObject *e)
{
    if (e->prev != NULL)
        e->prev->next = e->next;
    else
        s->head = e->next;
    if (e->next != NULL)
        e->next->prev = e->prev;
    else
        s->tail = e->prev;
    e->prev = e->next = NULL;
    s->count--;
}

static inline void
segment_reset(Segment *s)
{
    s->head = s->tail = NULL;
    s->count = 0;
}

typedef struct {
    PyObject_HEAD
    PyObject *data;            /* dict: key -> Entry; owns the entries */
    PyObject *rng;
    PyObject *wheel;
    PyObject *cause_size;
    PyObject *cause_rejected;
    PyObject *ghost_rejected;  /* OrderedDict: key -> insertion count when refused */
    PyObject *ghost_victims;   /* OrderedDict: key -> insertion count when evicted from main */
    /* The shadow LRU (policy.py keeps it in an OrderedDict; OrderedDict's move_to_end and popitem
     * have no C API, and calling them as methods doubled the cost of a set in a small store). Its
     * keys sit in slots of a linked list kept in arrays, most recent first; the dict maps each key
     * to its slot's number. NULL when the store has no shadow. */
    PyObject *shadow;          /* dict: key -> slot (an int of shadow_ids) */
    PyObject **shadow_keys;    /* owned; NULL in a slot not in use */
    PyObject **shadow_ids;     /* owned ints 0..capacity-1 */
    Py_ssize_t *shadow_prev, *shadow_next;
    Py_ssize_t shadow_head, shadow_tail, shadow_used;
    SketchObject *sketch;
    Segment window, probation, protected_;
    EntryObject *reads[READ_BUFFER];  /* owned references */
    Py_ssize_t nreads;
    long long max_entries;     /* -1: none */
    long long max_bytes;       /* -1: none */
    long long limit;
    int bounded, by_bytes;
    long long window_limit, protected_limit;
    long long window_weight, protected_weight, policy_weight, bytes;
    long long hits, evictions, rejections, insertions, reads_since_write;
    double window_drift;
    long long shadow_capacity, shadow_requests, shadow_lru_hits, shadow_hits;
    int lru_leads;             /* periods LRU's last lead is still remembered */
    double next_reap;
} PolicyObject;

static PyObject *str_time, *str_levels, *str_popitem, *str_getrandbits;

static inline long long
units_of(PolicyObject *self, EntryObject *e)
{
    return self->by_bytes ? e->weight : 1;
}

static inline Segment *
segment_of(PolicyObject *self, int queue)
{
    return queue == Q_WINDOW ? &self->window
         : queue == Q_PROBATION ? &self->probation
                                : &self->protected_;
}

static void
demote_protected(PolicyObject *self)
{
    while (self->protected_weight > self->protected_limit && self->protected_.head != NULL) {
        EntryObject *e = self->protected_.head;
        segment_remove(&self->protected_, e);
        set_queue(e, Q_PROBATION);
        segment_push(&self->probation, e);
        self->protected_weight -= units_of(self, e);
    }
}

/* Record an access in the segments' recency order (the sketch is counted by the caller). */
static void
touch(PolicyObject *self, EntryObject *e)
{
    switch (QUEUE(e)) {
    case Q_WINDOW:
        segment_remove(&self->window, e);
        segment_push(&self->window, e);
        break;
    case Q_PROTECTED:
        segment_remove(&self->protected_, e);
        segment_push(&self->protected_, e);
        break;
    case Q_PROBATION: {
        long long units = units_of(self, e);
        segment_remove(&self->probation, e);
        if (units > self->protected_limit) {
            segment_push(&self->probation, e);  /* too heavy to protect: just refresh it */
            return;
        }
        set_queue(e, Q_PROTECTED);
        segment_push(&self->protected_, e);
        self->protected_weight += units;
        demote_protected(self);
        break;
    }
    default:
        break;
    }
}

static void grow_window(PolicyObject *self, long long quota);

/* policy.py's _shadow_access: one request through the shadow LRU, and every period the verdict
 * on the window. */
static inline void
shadow_unlink(PolicyObject *self, Py_ssize_t slot)
{
    Py_ssize_t prev = self->shadow_prev[slot], next = self->shadow_next[slot];
    if (prev >= 0)
        self->shadow_next[prev] = next;
    else
        self->shadow_head = next;
    if (next >= 0)
        self->shadow_prev[next] = prev;
    else
        self->shadow_tail = prev;
}

static inline void
shadow_push_front(PolicyObject *self, Py_ssize_t slot)
{
    self->shadow_prev[slot] = -1;
    self->shadow_next[slot] = self->shadow_head;
    if (self->shadow_head >= 0)
        self->shadow_prev[self->shadow_head] = slot;
    else
        self->shadow_tail = slot;
    self->shadow_head = slot;
}

static void
shadow_reset(PolicyObject *self)
{
    for (Py_ssize_t i = 0; i < self->shadow_used; i++)
        Py_CLEAR(self->shadow_keys[i]);
    self->shadow_head = self->shadow_tail = -1;
    self->shadow_used = 0;
}

static int
shadow_access(PolicyObject *self, PyObject *key, int hit)
{
    PyObject *found = PyDict_GetItemWithError(self->shadow, key);
    if (found != NULL) {
        Py_ssize_t slot = PyLong_AsSsize_t(found);
        if (slot == -1 && PyErr_Occurred())
            return -1;
        shadow_unlink(self, slot);
        shadow_push_front(self, slot);
        self->shadow_lru_hits++;
    }
    else {
        if (PyErr_Occurred())
            return -1;
        Py_ssize_t slot;
        if (self->shadow_used < self->shadow_capacity) {
            slot = self->shadow_used++;
        }
        else {
            /* Full: the least recently used key leaves (policy.py inserts first, then pops it;
             * the outcome is the same). */
            slot = self->shadow_tail;
            shadow_unlink(self, slot);
            PyObject *old = self->shadow_keys[slot];
            self->shadow_keys[slot] = NULL;
            if (old != NULL) {
                int status = PyDict_DelItem(self->shadow, old);
                Py_DECREF(old);
                if (status < 0) {
                    shadow_push_front(self, slot);  /* an empty slot, reused next time */
                    return -1;
                }
            }
        }
        shadow_push_front(self, slot);
        if (PyDict_SetItem(self->shadow, key, self->shadow_ids[slot]) < 0)
            return -1;  /* the slot stays empty */
        self->shadow_keys[slot] = Py_NewRef(key);
    }
    self->shadow_hits += hit;
    self->shadow_requests++;
    if (self->shadow_requests < SHADOW_PERIOD * self->shadow_capacity)
        return 0;
    long long lead = self->shadow_lru_hits - self->shadow_hits;
    if (lead > 0)
        self->lru_leads = SHADOW_MEMORY;
    else if (lead < 0)
        self->lru_leads = 0;
    else if (self->lru_leads > 0)
        self->lru_leads--;
    if (lead * SHADOW_LEAD > self->shadow_requests)
        grow_window(self, self->limit);
    self->shadow_requests = self->shadow_lru_hits = self->shadow_hits = 0;
    return 0;
}

/* Apply buffered reads to the policy (under the lock). Never fails: a key whose hash raises now
 * (it hashed when it was stored) only loses its frequency count. */
static void
policy_drain(PolicyObject *self)
{
    Py_ssize_t count = self->nreads;
    if (count == 0)
        return;
    /* Take the batch out first: a key's __hash__ may run Python code, and a lock-free reader on
     * another thread may fill the buffer again meanwhile. */
    EntryObject *batch[READ_BUFFER];
    memcpy(batch, self->reads, (size_t)count * sizeof(EntryObject *));
    self->nreads = 0;
    self->hits += count;
    if (self->bounded) {
        Py_ssize_t start = 0;
        self->reads_since_write += count;
        if (self->reads_since_write > EXACT_READS && count > READ_SAMPLE)
            start = count - READ_SAMPLE;
        for (Py_ssize_t i = start; i < count; i++) {
            EntryObject *e = batch[i];
            if (QUEUE(e) == Q_REMOVED)
                continue;
            Py_hash_t h = PyObject_Hash(e->key);
            if (h == -1) {
                PyErr_Clear();
                continue;
            }
            if (QUEUE(e) == Q_REMOVED)  /* the hash ran Python code that removed it */
                continue;
            sketch_increment(self->sketch, h);
            touch(self, e);
            /* As in the reference; an error here (a key's __eq__ raising in the shadow) only
             * costs the shadow one request. */
            if (self->shadow != NULL && shadow_access(self, e->key, 1) < 0)
                PyErr_Clear();
        }
    }
    for (Py_ssize_t i = 0; i < count; i++)
        Py_DECREF(batch[i]);
}

/* Remove an entry from every structure. */
static int
policy_unlink(PolicyObject *self, EntryObject *e)
{
    if (QUEUE(e) == Q_REMOVED) {
        PyErr_SetObject(PyExc_KeyError, e->key);
        return -1;
    }
    Py_INCREF(e);
    long long units = units_of(self, e);
    segment_remove(segment_of(self, QUEUE(e)), e);
    if (QUEUE(e) == Q_WINDOW)
        self->window_weight -= units;
    else if (QUEUE(e) == Q_PROTECTED)
        self->protected_weight -= units;
    self->policy_weight -= units;
    self->bytes -= e->weight;
    set_queue(e, Q_REMOVED);
    int status = 0;
    PyObject *bucket = take_bucket(e);
    if (bucket != NULL) {
        if (PyDict_DelItem(bucket, e->key) < 0)
            status = -1;
        Py_DECREF(bucket);
    }
    if (PyDict_DelItem(self->data, e->key) < 0)
        status = -1;
    Py_DECREF(e);
    return status;
}

static inline int
over_budget(PolicyObject *self)
{
    return self->policy_weight > self->limit ||
           (self->max_entries >= 0 && PyDict_GET_SIZE(self->data) > self->max_entries);
}

static inline long long
ghost_limit(PolicyObject *self)
{
    long long limit = (long long)((double)self->sketch->capacity * GHOST_SHARE);
    return limit < 1 ? 1 : limit;
}

static int
evict_entry(PolicyObject *self, EntryObject *e, int rejected, PyObject *removed)
{
    PyObject *ghost = rejected ? self->ghost_rejected : self->ghost_victims;
    PyObject *stamp = PyLong_FromLongLong(self->insertions);
    if (stamp == NULL)
        return -1;
    int status = PyObject_SetItem(ghost, e->key, stamp);
    Py_DECREF(stamp);
    if (status < 0)
        return -1;
    long long limit = ghost_limit(self);
    if (rejected) {
        /* policy.py's _evict_entry: the refused list spans the grow reach, within bounds. */
        long long reach = GROW_REACH * self->window_limit + 1;
        long long floor = limit * REFUSED_FLOOR_NUM / REFUSED_FLOOR_DEN;
        if (reach < limit)
            limit = reach > floor ? reach : floor;
        if (limit < 1)
            limit = 1;
    }
    if (PyDict_GET_SIZE(ghost) > limit) {
        PyObject *args[2] = {ghost, Py_False};
        PyObject *item = PyObject_VectorcallMethod(
            str_popitem, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (item == NULL)
            return -1;
        Py_DECREF(item);
    }
    Py_INCREF(e);
    if (policy_unlink(self, e) < 0) {
        Py_DECREF(e);
        return -1;
    }
    self->evictions++;
    if (removed != NULL && removed != Py_None) {
        PyObject *t = PyTuple_Pack(3, e->key, e->value,
                                   rejected ? self->cause_rejected : self->cause_size);
        if (t == NULL || PyList_Append(removed, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(e);
            return -1;
        }
        Py_DECREF(t);
    }
    Py_DECREF(e);
    return 0;
}

static int
admit(PolicyObject *self, EntryObject *candidate, EntryObject *victim)
{
    /* policy.py's _admit: before the first hit, admit as LRU would (see there). */
    if (self->hits == 0 && self->insertions < COLD_INSERTS * (long long)PyDict_GET_SIZE(self->data))
        return 1;
    Py_hash_t hc = PyObject_Hash(candidate->key);
    if (hc == -1)
        return -1;
    Py_hash_t hv = PyObject_Hash(victim->key);
    if (hv == -1)
        return -1;
    int candidate_freq = sketch_frequency(self->sketch, hc);
    int victim_freq = sketch_frequency(self->sketch, hv);
    if (candidate_freq > victim_freq)
        return 1;
    if (candidate_freq < HASHDOS_THRESHOLD)
        return 0;
    /* An attacker can inflate a victim's count with colliding keys so that nothing new is ever
     * admitted; letting a warm candidate in at random now and then defeats that (Caffeine). */
    PyObject *seven = PyLong_FromLong(7);
    if (seven == NULL)
        return -1;
    PyObject *args[2] = {self->rng, seven};
    PyObject *bits = PyObject_VectorcallMethod(
        str_getrandbits, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(seven);
    if (bits == NULL)
        return -1;
    long value = PyLong_AsLong(bits);
    Py_DECREF(bits);
    if (value == -1 && PyErr_Occurred())
        return -1;
    return value == 0;
}

static EntryObject *
first_victim(PolicyObject *self)
{
    if (self->probation.head != NULL)
        return self->probation.head;
    if (self->protected_.head != NULL)
        return self->protected_.head;
    return self->window.head;
}

/* Restore the budget: window overflow becomes candidates, candidates face victims. */
static int
policy_evict(PolicyObject *self, PyObject *removed)
{
    Py_ssize_t ncand = 0, cap = 8;
    EntryObject *small[8];
    EntryObject **cands = small;
    int status = 0;
    while (self->window_weight > self->window_limit && self->window.head != NULL) {
        EntryObject *e = self->window.head;
        segment_remove(&self->window, e);
        self->window_weight -= units_of(self, e);
        set_queue(e, Q_PROBATION);
        segment_push(&self->probation, e);
        if (ncand == cap) {
            EntryObject **bigger = PyMem_Malloc((size_t)(2 * cap) * sizeof(EntryObject *));
            if (bigger == NULL) {
                PyErr_NoMemory();
                status = -1;
                goto done;
            }
            memcpy(bigger, cands, (size_t)ncand * sizeof(EntryObject *));
            if (cands != small)
                PyMem_Free(cands);
            cands = bigger;
            cap *= 2;
        }
        cands[ncand++] = (EntryObject *)Py_NewRef(e);
    }

    Py_ssize_t next = 0;
    while (over_budget(self)) {
        EntryObject *victim = first_victim(self);
        if (victim == NULL) {
            PyErr_SetString(PyExc_SystemError, "stratacache: over budget with no entries");
            status = -1;
            goto done;
        }
        EntryObject *candidate = NULL;
        while (next < ncand) {
            if (QUEUE(cands[next]) == Q_PROBATION) {
                candidate = cands[next];
                break;
            }
            next++;
        }
        if (candidate == NULL || candidate == victim) {
            /* Nothing left to compare: the least recently used entry goes. */
            if (candidate == victim)
                next++;
            status = evict_entry(self, victim, 0, removed);
        }
        else {
            int admitted = admit(self, candidate, victim);
            if (admitted < 0)
                status = -1;
            else if (admitted)
                status = evict_entry(self, victim, 0, removed);
            else {
                next++;
                self->rejections++;
                status = evict_entry(self, candidate, 1, removed);
            }
        }
        if (status < 0)
            goto done;
    }
done:
    for (Py_ssize_t i = 0; i < ncand; i++)
        Py_DECREF(cands[i]);
    if (cands != small)
        PyMem_Free(cands);
    return status;
}

/* Set the window's limit (kept within [1, budget - 1]); return the change. */
static long long
resize_window(PolicyObject *self, long long limit)
{
    if (limit > self->limit - 1)
        limit = self->limit - 1;
    if (limit < 1)
        limit = 1;
    long long change = limit - self->window_limit;
    self->window_limit = limit;
    /* Protected keeps its share of whatever the main area is now. */
    self->protected_limit = (long long)((double)(self->limit - limit) * PROTECTED_SHARE);
    return change;
}

static void
grow_window(PolicyObject *self, long long quota)
{
    quota = resize_window(self, self->window_limit + quota);
    if (quota <= 0)
        return;
    demote_protected(self);
    /* Move the main area's least recently used entries into the window's MRU end. */
    for (int i = 0; i < TRANSFER_LIMIT; i++) {
        Segment *segment = self->probation.count ? &self->probation : &self->protected_;
        EntryObject *e = segment->head;
        if (e == NULL)
            break;
        long long units = units_of(self, e);
        if (quota < units)
            break;
        quota -= units;
        segment_remove(segment, e);
        if (QUEUE(e) == Q_PROTECTED)
            self->protected_weight -= units;
        set_queue(e, Q_WINDOW);
        segment_push(&self->window, e);
        self->window_weight += units;
    }
}

static void
shrink_window(PolicyObject *self, long long quota)
{
    quota = -resize_window(self, self->window_limit - quota);
    if (quota <= 0)
        return;
    for (int i = 0; i < TRANSFER_LIMIT; i++) {
        EntryObject *e = self->window.head;
        if (e == NULL)
            break;
        long long units = units_of(self, e);
        if (quota < units)
            break;
        quota -= units;
        segment_remove(&self->window, e);
        self->window_weight -= units;
        set_queue(e, Q_PROBATION);
        segment_push(&self->probation, e);
    }
}

/* policy.py's _adapt_window: one step of the window along the ghost lists' gradient. */
static int
adapt_window(PolicyObject *self, PyObject *key, long long units)
{
    PyObject *refused_at = PyDict_GetItemWithError(self->ghost_rejected, key);
    if (refused_at != NULL) {
        long long at = PyLong_AsLongLong(refused_at);
        if (at == -1 && PyErr_Occurred())
            return -1;
        if (PyObject_DelItem(self->ghost_rejected, key) < 0)
            return -1;
        if (self->insertions - at > GROW_REACH * (long long)self->window.count + 1)
            return 0;
        self->window_drift += (double)units * GROW_STEP;
    }
    else {
        if (PyErr_Occurred())
            return -1;
        PyObject *victim = PyDict_GetItemWithError(self->ghost_victims, key);
        if (victim == NULL)
            return PyErr_Occurred() ? -1 : 0;
        if (PyObject_DelItem(self->ghost_victims, key) < 0)
            return -1;
        if (self->lru_leads)  /* the shadow says recency pays: no vote to shrink */
            return 0;
        self->window_drift -= (double)units * SHRINK_STEP;
    }
    long long step = (long long)self->window_drift;
    if (step > 0)
        grow_window(self, step);
    else if (step < 0)
        shrink_window(self, -step);
    self->window_drift -= (double)step;
    return 0;
}

/* timerwheel.py's TimerWheel.schedule, step for step, on the wheel's own lists: file the entry
 * in the bucket of its expiry time (it has one: the caller set a TTL). The Python method cost a
 * TTL write more than the rest of the write together. Spans are powers of two, so the float
 * division is exact and floor() equals Python's //. */
static const double WHEEL_SPANS[4] = {1.0, 64.0, 4096.0, 262144.0};
#define WHEEL_BUCKETS 64

static int
wheel_schedule(PolicyObject *self, EntryObject *e)
{
    Timer *t = TIMER(e);
    if (t == NULL || t->expires == 0.0) {
        PyErr_SetString(PyExc_SystemError, "stratacache: scheduling an entry without a TTL");
        return -1;
    }
    PyObject *time_obj = PyObject_GetAttr(self->wheel, str_time);
    if (time_obj == NULL)
        return -1;
    double now = PyFloat_AsDouble(time_obj);
    Py_DECREF(time_obj);
    if (now == -1.0 && PyErr_Occurred())
        return -1;
    PyObject *levels = PyObject_GetAttr(self->wheel, str_levels);
    if (levels == NULL)
        return -1;
    if (!PyList_CheckExact(levels) || PyList_GET_SIZE(levels) != 4) {
        Py_DECREF(levels);
        PyErr_SetString(PyExc_SystemError, "stratacache: unexpected timer wheel layout");
        return -1;
    }
    if (t->bucket != NULL) {
        PyObject *old = t->bucket;
        t->bucket = NULL;  /* the timer stays: it holds an expiry */
        int status = PyDict_DelItem(old, e->key);
        Py_DECREF(old);
        if (status < 0) {
            Py_DECREF(levels);
            return -1;
        }
    }
    /* An entry already due goes in the current bucket, which the next advance visits. */
    double expires = t->expires < now ? now : t->expires;
    double delta = expires - now;
    int level = 0;
    while (level < 3 && !(delta < WHEEL_SPANS[level] * WHEEL_BUCKETS))
        level++;
    double ticks = floor(expires / WHEEL_SPANS[level]);
    /* int(ticks) & 63: beyond 2**62 a double is a multiple of 2**10, so its low bits are 0. */
    Py_ssize_t index = fabs(ticks) < 4611686018427387904.0
                           ? (Py_ssize_t)((long long)ticks & (WHEEL_BUCKETS - 1))
                           : 0;
    PyObject *row = PyList_GET_ITEM(levels, level);
    if (!PyList_CheckExact(row) || PyList_GET_SIZE(row) != WHEEL_BUCKETS) {
        Py_DECREF(levels);
        PyErr_SetString(PyExc_SystemError, "stratacache: unexpected timer wheel layout");
        return -1;
    }
    PyObject *bucket = Py_NewRef(PyList_GET_ITEM(row, index));
    Py_DECREF(levels);
    if (!PyDict_CheckExact(bucket) || PyDict_SetItem(bucket, e->key, (PyObject *)e) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_SystemError, "stratacache: unexpected timer wheel layout");
        Py_DECREF(bucket);
        return -1;
    }
    t->bucket = bucket;  /* the reference taken above */
    return 0;
}

/* Insert or replace (policy.py's Policy.put). *out is the entry (a new reference), or NULL when the
 * value is heavier than the whole budget. */
static int
policy_put(PolicyObject *self, PyObject *key, PyObject *value, long long weight, double expires,
           PyObject *removed, EntryObject **out)
{
    *out = NULL;
    /* Apply pending reads first: eviction below must see the accesses that came before this. */
    policy_drain(self);
    self->reads_since_write = 0;
    long long units = self->by_bytes ? weight : 1;
    PyObject *found = PyDict_GetItemWithError(self->data, key);
    if (found == NULL && PyErr_Occurred())
        return -1;
    if (found != NULL && !Py_IS_TYPE(found, &EntryType)) {
        PyErr_SetString(PyExc_SystemError, "stratacache: foreign object in the store's table");
        return -1;
    }
    EntryObject *entry = (EntryObject *)Py_XNewRef(found);
    if (self->bounded &&
        (units > self->limit || (self->max_bytes >= 0 && weight > self->max_bytes))) {
        /* Heavier than the whole budget: storing it would flush everything else for nothing. */
        int status = 0;
        if (entry != NULL) {
            status = policy_unlink(self, entry);
            Py_DECREF(entry);
        }
        self->rejections++;
        return status;
    }
    PyObject *old_value = NULL;
    if (entry == NULL) {
        if (self->shadow != NULL && shadow_access(self, key, 0) < 0)
            return -1;
        if (self->bounded && adapt_window(self, key, units) < 0)
            return -1;
        self->insertions++;
        entry = entry_create(key, value, weight, expires);
        if (entry == NULL)
            return -1;
        if (PyDict_SetItem(self->data, key, (PyObject *)entry) < 0) {
            Py_DECREF(entry);
            return -1;
        }
        segment_push(&self->window, entry);
        self->window_weight += units;
        self->policy_weight += units;
        self->bytes += weight;
    }
    else {
        if (expires != 0.0 && ensure_timer(entry) == NULL) {
            Py_DECREF(entry);
            return -1;
        }
        long long delta = units - units_of(self, entry);
        self->policy_weight += delta;
        if (QUEUE(entry) == Q_WINDOW)
            self->window_weight += delta;
        else if (QUEUE(entry) == Q_PROTECTED)
            self->protected_weight += delta;
        self->bytes += weight - entry->weight;
        /* The old value is released at the end: its destructor may run Python code. */
        old_value = entry->value;
        entry->value = Py_NewRef(value);
        entry->weight = weight;
        (void)set_expires(entry, expires);  /* cannot fail: the timer record exists if needed */
        touch(self, entry);
    }
    int status = 0;
    if (expires != 0.0) {
        if (wheel_schedule(self, entry) < 0)
            status = -1;
    }
    else {
        PyObject *bucket = take_bucket(entry);
        if (bucket != NULL) {
            if (PyDict_DelItem(bucket, key) < 0)
                status = -1;
            Py_DECREF(bucket);
        }
    }
    if (status == 0 && self->bounded) {
        Py_hash_t h = PyObject_Hash(key);
        if (h == -1)
            status = -1;
        else {
            sketch_increment(self->sketch, h);
            if (self->window_weight > self->window_limit || over_budget(self))
                status = policy_evict(self, removed);
        }
        if (status == 0 && self->max_entries < 0 &&
            self->sketch->capacity < PyDict_GET_SIZE(self->data)) {
            /* A byte-bounded store learns its entry count as it fills; Caffeine grows its sketch
             * the same way. The counts restart, which costs a little accuracy per doubling. */
            PyObject *args[2] = {self->rng, NULL};
            PyObject *bits = PyLong_FromLong(64);
            PyObject *seed = NULL;
            if (bits != NULL) {
                args[1] = bits;
                seed = PyObject_VectorcallMethod(
                    str_getrandbits, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
                Py_DECREF(bits);
            }
            SketchObject *grown =
                seed == NULL ? NULL : sketch_create(2 * PyDict_GET_SIZE(self->data), seed);
            Py_XDECREF(seed);
            if (grown == NULL)
                status = -1;
            else
                Py_SETREF(self->sketch, grown);
        }
    }
    Py_XDECREF(old_value);
    if (status < 0) {
        Py_DECREF(entry);
        return -1;
    }
    *out = entry;
    return 0;
}

static void
policy_clear(PolicyObject *self)
{
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(self->data, &pos, &key, &value)) {
        if (!Py_IS_TYPE(value, &EntryType))
            continue;
        EntryObject *e = (EntryObject *)value;
        set_queue(e, Q_REMOVED);
        e->prev = e->next = NULL;
        PyObject *bucket = take_bucket(e);
        Py_XDECREF(bucket);  /* the wheel still holds its buckets: no destructor runs here */
    }
    segment_reset(&self->window);
    segment_reset(&self->probation);
    segment_reset(&self->protected_);
    Py_ssize_t count = self->nreads;
    self->nreads = 0;
    self->hits += count;  /* buffered hits were hits; only the policy forgets them */
    memset(self->sketch->table, 0, (size_t)(DEPTH * self->sketch->width / 2));
    self->sketch->additions = 0;
    if (self->shadow != NULL) {
        PyDict_Clear(self->shadow);
        shadow_reset(self);
    }
    self->shadow_requests = self->shadow_lru_hits = self->shadow_hits = 0;
    self->window_weight = self->protected_weight = self->policy_weight = self->bytes = 0;
    PyObject *data = self->data;
    Py_INCREF(data);
    PyDict_Clear(data);
    for (Py_ssize_t i = 0; i < count; i++)
        Py_DECREF(self->reads[i]);
    Py_DECREF(data);
}

static int
Policy_init(PolicyObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *max_entries_obj, *max_bytes_obj, *rng, *wheel, *size, *rejected;
    static char *kwlist[] = {"max_entries", "max_bytes", "rng", "wheel", "size", "rejected", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO$OOOO", kwlist, &max_entries_obj,
                                     &max_bytes_obj, &rng, &wheel, &size, &rejected))
        return -1;
    if (self->data != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Policy is already initialised");
        return -1;
    }
    long long max_entries = -1, max_bytes = -1;
    if (max_entries_obj != Py_None) {
        max_entries = PyLong_AsLongLong(max_entries_obj);
        if (max_entries == -1 && PyErr_Occurred())
            return -1;
        if (max_entries < 1) {
            PyErr_SetString(PyExc_ValueError, "max_entries must be positive");
            return -1;
        }
    }
    if (max_bytes_obj != Py_None) {
        max_bytes = PyLong_AsLongLong(max_bytes_obj);
        if (max_bytes == -1 && PyErr_Occurred())
            return -1;
        if (max_bytes < 1) {
            PyErr_SetString(PyExc_ValueError, "max_bytes must be positive");
            return -1;
        }
    }
    self->max_entries = max_entries;
    self->max_bytes = max_bytes;
    self->bounded = max_entries >= 0 || max_bytes >= 0;
    self->by_bytes = max_bytes >= 0;
    self->limit = max_bytes >= 0 ? max_bytes : (max_entries >= 0 ? max_entries : 0);
    if (self->bounded) {
        long long w = (long long)((double)self->limit * INITIAL_WINDOW);
        self->window_limit = w < 1 ? 1 : w;
    }
    else
        self->window_limit = 0;
    self->protected_limit =
        (long long)((double)(self->limit - self->window_limit) * PROTECTED_SHARE);

    PyObject *collections = PyImport_ImportModule("collections");
    if (collections == NULL)
        return -1;
    PyObject *odict = PyObject_GetAttrString(collections, "OrderedDict");
    Py_DECREF(collections);
    if (odict == NULL)
        return -1;
    self->ghost_rejected = PyObject_CallNoArgs(odict);
    self->ghost_victims = self->ghost_rejected ? PyObject_CallNoArgs(odict) : NULL;
    if (self->ghost_victims != NULL && max_entries >= 0 && max_bytes < 0 &&
        max_entries <= SHADOW_KEYS) {
        /* policy.py: small stores run a shadow LRU of their own size. */
        Py_ssize_t n = (Py_ssize_t)max_entries;
        self->shadow_capacity = max_entries;
        self->shadow_head = self->shadow_tail = -1;
        self->shadow_used = 0;
        self->shadow = PyDict_New();
        self->shadow_keys = PyMem_Calloc((size_t)n, sizeof(PyObject *));
        self->shadow_ids = PyMem_Calloc((size_t)n, sizeof(PyObject *));
        self->shadow_prev = PyMem_Calloc((size_t)n, sizeof(Py_ssize_t));
        self->shadow_next = PyMem_Calloc((size_t)n, sizeof(Py_ssize_t));
        if (self->shadow == NULL || self->shadow_keys == NULL || self->shadow_ids == NULL ||
            self->shadow_prev == NULL || self->shadow_next == NULL) {
            Py_DECREF(odict);
            if (!PyErr_Occurred())
                PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            self->shadow_ids[i] = PyLong_FromSsize_t(i);
            if (self->shadow_ids[i] == NULL) {
                Py_DECREF(odict);
                return -1;
            }
        }
    }
    Py_DECREF(odict);
    if (self->ghost_victims == NULL)
        return -1;
    self->data = PyDict_New();
    if (self->data == NULL)
        return -1;
    self->rng = Py_NewRef(rng);
    self->wheel = Py_NewRef(wheel);
    self->cause_size = Py_NewRef(size);
    self->cause_rejected = Py_NewRef(rejected);
    /* The sketch's seed is the rng's first draw, as in policy.py. */
    PyObject *gargs[2] = {rng, NULL};
    PyObject *bits = PyLong_FromLong(64);
    if (bits == NULL)
        return -1;
    gargs[1] = bits;
    PyObject *seed = PyObject_VectorcallMethod(
        str_getrandbits, gargs, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(bits);
    if (seed == NULL)
        return -1;
    self->sketch = sketch_create(max_entries >= 0 ? (Py_ssize_t)max_entries : 256, seed);
    Py_DECREF(seed);
    if (self->sketch == NULL)
        return -1;
    return 0;
}

static int
Policy_traverse(PolicyObject *self, visitproc visit, void *arg)
{
    /* Entries are not tracked by the garbage collector (it would cost 16 bytes each): the policy
     * reports the references its table's entries hold instead, so a cycle through a cached value
     * (a value that refers back to the store) is still found. An entry outside the table (a
     * removed one, still in the read buffer or a caller's hands) is not reported: the collector
     * then sees its references as external and keeps what they point to, which is safe. */
    if (self->data != NULL) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(self->data, &pos, &key, &value)) {
            if (!Py_IS_TYPE(value, &EntryType))
                continue;
            EntryObject *e = (EntryObject *)value;
            Py_VISIT(e->key);
            Py_VISIT(e->value);
        }
    }
    Py_VISIT(self->data);
    Py_VISIT(self->rng);
    Py_VISIT(self->wheel);
    Py_VISIT(self->cause_size);
    Py_VISIT(self->cause_rejected);
    Py_VISIT(self->ghost_rejected);
    Py_VISIT(self->ghost_victims);
    Py_VISIT(self->shadow);  /* it holds every key a slot holds */
    return 0;
}

static int
Policy_clear(PolicyObject *self)
{
    /* The links are borrowed from the table: forget them before the table can go. */
    segment_reset(&self->window);
    segment_reset(&self->probation);
    segment_reset(&self->protected_);
    Py_ssize_t count = self->nreads;
    self->nreads = 0;
    for (Py_ssize_t i = 0; i < count; i++)
        Py_CLEAR(self->reads[i]);
    Py_CLEAR(self->data);
    Py_CLEAR(self->rng);
    Py_CLEAR(self->wheel);
    Py_CLEAR(self->cause_size);
    Py_CLEAR(self->cause_rejected);
    Py_CLEAR(self->ghost_rejected);
    Py_CLEAR(self->ghost_victims);
    if (self->shadow_keys != NULL)
        shadow_reset(self);
    if (self->shadow_ids != NULL) {
        for (Py_ssize_t i = 0; i < (Py_ssize_t)self->shadow_capacity; i++)
            Py_CLEAR(self->shadow_ids[i]);
    }
    PyMem_Free(self->shadow_keys);
    PyMem_Free(self->shadow_ids);
    PyMem_Free(self->shadow_prev);
    PyMem_Free(self->shadow_next);
    self->shadow_keys = self->shadow_ids = NULL;
    self->shadow_prev = self->shadow_next = NULL;
    Py_CLEAR(self->shadow);
    Py_CLEAR(self->sketch);
    return 0;
}

static void
Policy_dealloc(PolicyObject *self)
{
    PyObject_GC_UnTrack(self);
    Policy_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
policy_ready(PolicyObject *self)
{
    if (self->data == NULL || self->sketch == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Policy is not initialised");
        return -1;
    }
    return 0;
}

static PyObject *
Policy_put(PolicyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "put(key, value, weight, expires, removed)");
        return NULL;
    }
    if (policy_ready(self) < 0)
        return NULL;
    long long weight = PyLong_AsLongLong(args[2]);
    if (weight == -1 && PyErr_Occurred())
        return NULL;
    double expires = PyFloat_AsDouble(args[3]);
    if (expires == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *removed = args[4];
    if (removed != Py_None && !PyList_Check(removed)) {
        PyErr_SetString(PyExc_TypeError, "removed must be a list or None");
        return NULL;
    }
    EntryObject *entry;
    if (policy_put(self, args[0], args[1], weight, expires, removed, &entry) < 0)
        return NULL;
    if (entry == NULL)
        Py_RETURN_NONE;
    return (PyObject *)entry;
}

static PyObject *
Policy_unlink(PolicyObject *self, PyObject *arg)
{
    if (!Py_IS_TYPE(arg, &EntryType)) {
        PyErr_SetString(PyExc_TypeError, "unlink() takes an Entry");
        return NULL;
    }
    if (policy_ready(self) < 0 || policy_unlink(self, (EntryObject *)arg) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Policy_drain(PolicyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (policy_ready(self) < 0)
        return NULL;
    policy_drain(self);
    Py_RETURN_NONE;
}

static PyObject *
Policy_clear_method(PolicyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (policy_ready(self) < 0)
        return NULL;
    policy_clear(self);
    Py_RETURN_NONE;
}

static PyObject *
Policy_get_reads(PolicyObject *self, void *Py_UNUSED(closure))
{
    PyObject *list = PyList_New(self->nreads);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < self->nreads; i++)
        PyList_SET_ITEM(list, i, Py_NewRef(self->reads[i]));
    return list;
}

static PyMethodDef Policy_methods[] = {
    {"put", (PyCFunction)(void (*)(void))Policy_put, METH_FASTCALL,
     "put(key, value, weight, expires, removed) -> Entry | None: insert or replace."},
    {"unlink", (PyCFunction)Policy_unlink, METH_O, "Remove an entry from every structure."},
    {"drain", (PyCFunction)Policy_drain, METH_NOARGS, "Apply buffered reads to the policy."},
    {"clear", (PyCFunction)Policy_clear_method, METH_NOARGS, "Remove every entry."},
    {NULL}
};

static PyGetSetDef Policy_getset[] = {
    {"reads", (getter)Policy_get_reads, NULL, "a copy of the read buffer", NULL},
    {NULL}
};

static PyMemberDef Policy_members[] = {
    {"data", T_OBJECT, offsetof(PolicyObject, data), READONLY, "the key table"},
    {"hits", T_LONGLONG, offsetof(PolicyObject, hits), READONLY, "hits applied"},
    {"evictions", T_LONGLONG, offsetof(PolicyObject, evictions), READONLY, "evictions"},
    {"rejections", T_LONGLONG, offsetof(PolicyObject, rejections), READONLY, "rejections"},
    {"bytes", T_LONGLONG, offsetof(PolicyObject, bytes), READONLY, "total weight"},
    {"window_weight", T_LONGLONG, offsetof(PolicyObject, window_weight), READONLY, ""},
    {"protected_weight", T_LONGLONG, offsetof(PolicyObject, protected_weight), READONLY, ""},
    {"policy_weight", T_LONGLONG, offsetof(PolicyObject, policy_weight), READONLY, ""},
    {"window_limit", T_LONGLONG, offsetof(PolicyObject, window_limit), READONLY, ""},
    {"protected_limit", T_LONGLONG, offsetof(PolicyObject, protected_limit), READONLY, ""},
    {"next_reap", T_DOUBLE, offsetof(PolicyObject, next_reap), 0,
     "when the store should next advance the timer wheel"},
    {NULL}
};

static PyTypeObject PolicyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stratacache.engine._accel.Policy",
    .tp_doc = "W-TinyLFU over a key table (policy.py's Policy, compiled).",
    .tp_basicsize = sizeof(PolicyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Policy_init,
    .tp_traverse = (traverseproc)Policy_traverse,
    .tp_clear = (inquiry)Policy_clear,
    .tp_dealloc = (destructor)Policy_dealloc,
    .tp_methods = Policy_methods,
    .tp_members = Policy_members,
    .tp_getset = Policy_getset,
};

/* --------------------------------------------------------------------------------- ReadPath */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PolicyObject *policy;
    LockObject *lock;
    PyObject *clock;        /* callable -> float seconds */
    PyObject *on_expired;   /* callable(entry): reclaim an entry found expired */
    PyObject *invalid_key;  /* the exception class for unhashable keys */
    Py_ssize_t misses;
} ReadPathObject;

/* The store's clock, in seconds; -1.0 with an exception set if it failed. */
static double
read_clock(PyObject *clock)
{
    PyObject *now_obj = PyObject_CallNoArgs(clock);
    if (now_obj == NULL)
        return -1.0;
    double now = PyFloat_AsDouble(now_obj);
    Py_DECREF(now_obj);
    return now;
}

/* The entry under ``key`` (borrowed), or NULL: absent (no exception set) or an error (set; an
 * unhashable key becomes the store's InvalidKeyError, as Store._find raises it). */
static inline EntryObject *
readpath_find(ReadPathObject *self, PyObject *key)
{
    PyObject *found = PyDict_GetItemWithError(self->policy->data, key); /* borrowed */
    if (found == NULL) {
        if (PyErr_Occurred() && PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(self->invalid_key, "unhashable key of type %.100s",
                         Py_TYPE(key)->tp_name);
        }
        return NULL;
    }
    if (!Py_IS_TYPE(found, &EntryType)) {
        PyErr_SetString(PyExc_SystemError, "stratacache: foreign object in the store's table");
        return NULL;
    }
    return (EntryObject *)found;
}

static PyObject *
readpath_get(ReadPathObject *self, PyObject *key, PyObject *deflt)
{
    PolicyObject *policy = self->policy;
    EntryObject *entry = readpath_find(self, key);
    if (entry == NULL) {
        if (PyErr_Occurred())
            return NULL;
        self->misses++;
        return Py_NewRef(deflt);
    }
    if (TIMER(entry) != NULL && EXPIRES(entry) != 0.0) {
        Py_INCREF(entry);
        double now = read_clock(self->clock);
        if (now == -1.0 && PyErr_Occurred()) {
            Py_DECREF(entry);
            return NULL;
        }
        if (EXPIRES(entry) <= now) {
            PyObject *r = PyObject_CallOneArg(self->on_expired, (PyObject *)entry);
            Py_DECREF(entry);
            if (r == NULL)
                return NULL;
            Py_DECREF(r);
            self->misses++;
            return Py_NewRef(deflt);
        }
        /* The clock may have run Python code: look again if the entry went meanwhile. */
        int gone = QUEUE(entry) == Q_REMOVED;
        Py_DECREF(entry);
        if (gone)
            return readpath_get(self, key, deflt);
    }
    PyObject *result = Py_NewRef(entry->value);
    if (policy->nreads < READ_BUFFER) {
        policy->reads[policy->nreads++] = (EntryObject *)Py_NewRef(entry);
        if (policy->nreads == READ_BUFFER && lock_try(self->lock)) {
            /* Never wait: if another thread holds the lock, the reads stay buffered for it. */
            policy_drain(policy);
            lock_release(self->lock);
        }
    }
    else {
        /* Full while another thread holds the lock: count the hit, drop the access (as
         * Caffeine drops reads from a full buffer). */
        policy->hits++;
    }
    return result;
}

static PyObject *
ReadPath_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    ReadPathObject *self = (ReadPathObject *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames == NULL && nargs == 1)
        return readpath_get(self, args[0], Py_None);
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
    PyObject *policy, *lock, *clock, *on_expired, *invalid_key;
    static char *kwlist[] = {"policy", "lock", "clock", "on_expired", "invalid_key", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "$O!O!OOO", kwlist, &PolicyType, &policy,
                                     &LockType, &lock, &clock, &on_expired, &invalid_key))
        return NULL;
    if (policy_ready((PolicyObject *)policy) < 0)
        return NULL;
    ReadPathObject *self = (ReadPathObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = ReadPath_vectorcall;
    self->policy = (PolicyObject *)Py_NewRef(policy);
    self->lock = (LockObject *)Py_NewRef(lock);
    self->clock = Py_NewRef(clock);
    self->on_expired = Py_NewRef(on_expired);
    self->invalid_key = Py_NewRef(invalid_key);
    self->misses = 0;
    return (PyObject *)self;
}

static int
ReadPath_traverse(ReadPathObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->policy);
    Py_VISIT(self->lock);
    Py_VISIT(self->clock);
    Py_VISIT(self->on_expired);
    Py_VISIT(self->invalid_key);
    return 0;
}

static int
ReadPath_clear(ReadPathObject *self)
{
    Py_CLEAR(self->policy);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->on_expired);
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

/* Store.ttl, compiled: seconds until ``key`` expires, None if never, KeyError if absent or
 * expired (an expired entry is reclaimed on the way, as Store._live does). Store._find's test:
 * an entry expires when the clock reaches its deadline. */
static PyObject *
ReadPath_ttl(ReadPathObject *self, PyObject *key)
{
    for (;;) {
        EntryObject *entry = readpath_find(self, key);
        if (entry == NULL) {
            if (PyErr_Occurred())
                return NULL;
            break;
        }
        Py_INCREF(entry);
        double expires = EXPIRES(entry);
        if (expires == 0.0) {
            Py_DECREF(entry);
            Py_RETURN_NONE;
        }
        double now = read_clock(self->clock);
        if (now == -1.0 && PyErr_Occurred()) {
            Py_DECREF(entry);
            return NULL;
        }
        if (expires <= now) {
            PyObject *r = PyObject_CallOneArg(self->on_expired, (PyObject *)entry);
            Py_DECREF(entry);
            if (r == NULL)
                return NULL;
            Py_DECREF(r);
            break;
        }
        /* The clock may have run Python code: look again if the entry went meanwhile. */
        int gone = QUEUE(entry) == Q_REMOVED;
        Py_DECREF(entry);
        if (!gone)
            return PyFloat_FromDouble(expires - now);
    }
    PyObject *args = PyTuple_Pack(1, key); /* KeyError(key), even for a tuple key */
    if (args != NULL) {
        PyErr_SetObject(PyExc_KeyError, args);
        Py_DECREF(args);
    }
    return NULL;
}

static PyMethodDef ReadPath_methods[] = {
    {"ttl", (PyCFunction)ReadPath_ttl, METH_O,
     "Store.ttl, compiled: seconds until key expires, None if never; KeyError if absent."},
    {NULL}
};

static PyMemberDef ReadPath_members[] = {
    {"misses", T_PYSSIZET, offsetof(ReadPathObject, misses), READONLY, "lookups that missed"},
    {NULL}
};

static PyTypeObject ReadPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stratacache.engine._accel.ReadPath",
    .tp_doc = "Store.get, compiled: get(key, default=None).",
    .tp_basicsize = sizeof(ReadPathObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = ReadPath_new,
    .tp_traverse = (traverseproc)ReadPath_traverse,
    .tp_clear = (inquiry)ReadPath_clear,
    .tp_dealloc = (destructor)ReadPath_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(ReadPathObject, vectorcall),
    .tp_members = ReadPath_members,
    .tp_methods = ReadPath_methods,
};

/* -------------------------------------------------------------------------------- WritePath */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PolicyObject *policy;
    LockObject *lock;
    PyObject *clock;    /* callable -> float seconds */
    PyObject *weigh;    /* the store's checked weigher: weigh(key, value) -> int */
    PyObject *weigher;  /* the weigher itself, tried first: its checks are redone here */
    PyObject *slow;     /* the Python Store.set, for everything unusual */
    PyObject *reap;     /* reap(now, removed): advance the timer wheel (under the lock) */
    PyObject *notify;   /* notify(removed), or None when nobody listens */
    int default_weigher;
} WritePathObject;

/* default_weigher's size of one object, or -1 when only the Python function knows it. */
static inline long long
inline_size(PyObject *o)
{
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyBytes_Type)
        return PyBytes_GET_SIZE(o);
    if (t == &PyUnicode_Type && PyUnicode_IS_ASCII(o))
        return PyUnicode_GET_LENGTH(o);
    if (t == &PyLong_Type) {
        /* sys.getsizeof(int): the header plus its digits, zero counted as one digit */
        Py_ssize_t digits = Py_ABS(Py_SIZE(o));
        return (long long)t->tp_basicsize + (long long)(digits ? digits : 1) * t->tp_itemsize;
    }
    return -1;
}

static PyObject *
WritePath_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    WritePathObject *self = (WritePathObject *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL || nargs < 2 || nargs > 3)
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    PyObject *key = args[0], *value = args[1], *ttl = nargs == 3 ? args[2] : Py_None;
    PyTypeObject *kt = Py_TYPE(key);
    if (kt != &PyUnicode_Type && kt != &PyBytes_Type && kt != &PyLong_Type)
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);

    double expires = 0.0;
    if (ttl != Py_None) {
        double seconds;
        if (PyFloat_CheckExact(ttl))
            seconds = PyFloat_AS_DOUBLE(ttl);
        else if (PyLong_CheckExact(ttl)) {
            seconds = PyLong_AsDouble(ttl);
            if (seconds == -1.0 && PyErr_Occurred()) {
                PyErr_Clear();
                return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
            }
        }
        else
            return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
        if (!isfinite(seconds) || seconds <= 0)
            return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
        double now = read_clock(self->clock);
        if (now == -1.0 && PyErr_Occurred())
            return NULL;
        expires = now + seconds;
        /* 0.0 means "never expires" in an entry; a clock that reads exactly -ttl must not say so. */
        if (expires == 0.0)
            expires = 5e-324;
    }

    long long weight = -1;
    if (self->default_weigher) {
        long long key_size = inline_size(key), value_size = inline_size(value);
        if (key_size >= 0 && value_size >= 0)
            weight = key_size + value_size;
    }
    if (weight < 0) {
        /* The user's weigher straight, without Store._weigh's Python frame; a result that is not
           an exact int in [0, 2**62], or an exception, is left to the checked path below, which
           raises the WeigherError (the weigher is then called a second time). */
        PyObject *argv[2] = {key, value};
        PyObject *w = PyObject_Vectorcall(self->weigher, argv, 2, NULL);
        if (w != NULL && PyLong_CheckExact(w)) {
            int overflow = 0;
            long long v = PyLong_AsLongLongAndOverflow(w, &overflow);
            if (!overflow && v >= 0 && v <= (1LL << 62))
                weight = v;
        }
        Py_XDECREF(w);
        PyErr_Clear();
    }
    if (weight < 0) {
        PyObject *w = PyObject_CallFunctionObjArgs(self->weigh, key, value, NULL);
        if (w == NULL)
            return NULL;
        weight = PyLong_AsLongLong(w);
        Py_DECREF(w);
        if (weight == -1 && PyErr_Occurred())
            return NULL;
    }

    PyObject *removed = NULL;
    if (self->notify != Py_None) {
        removed = PyList_New(0);
        if (removed == NULL)
            return NULL;
    }
    PolicyObject *policy = self->policy;
    lock_acquire(self->lock);
    EntryObject *entry;
    int stored = 0;
    int status = policy_put(policy, key, value, weight, expires, removed, &entry);
    if (status == 0 && entry != NULL) {
        double now = read_clock(self->clock);
        if (now == -1.0 && PyErr_Occurred())
            status = -1;
        else if (now >= policy->next_reap) {
            PyObject *reaped = removed != NULL ? Py_NewRef(removed) : PyList_New(0);
            PyObject *now_obj = reaped == NULL ? NULL : PyFloat_FromDouble(now);
            PyObject *r = now_obj == NULL
                              ? NULL
                              : PyObject_CallFunctionObjArgs(self->reap, now_obj, reaped, NULL);
            Py_XDECREF(now_obj);
            Py_XDECREF(reaped);
            if (r == NULL)
                status = -1;
            Py_XDECREF(r);
        }
        stored = QUEUE(entry) != Q_REMOVED;
        Py_DECREF(entry);
    }
    lock_release(self->lock);
    if (status < 0) {
        Py_XDECREF(removed);
        return NULL;
    }
    if (removed != NULL) {
        if (PyList_GET_SIZE(removed) > 0) {
            PyObject *r = PyObject_CallOneArg(self->notify, removed);
            if (r == NULL) {
                Py_DECREF(removed);
                return NULL;
            }
            Py_DECREF(r);
        }
        Py_DECREF(removed);
    }
    return PyBool_FromLong(stored);
}

static PyObject *
WritePath_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *policy, *lock, *clock, *weigh, *weigher, *slow, *reap, *notify;
    int default_weigher;
    static char *kwlist[] = {"policy", "lock", "clock", "weigh",  "weigher", "default_weigher",
                             "slow",   "reap", "notify", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "$O!O!OOOpOOO", kwlist, &PolicyType, &policy,
                                     &LockType, &lock, &clock, &weigh, &weigher, &default_weigher,
                                     &slow, &reap, &notify))
        return NULL;
    if (policy_ready((PolicyObject *)policy) < 0)
        return NULL;
    WritePathObject *self = (WritePathObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = WritePath_vectorcall;
    self->policy = (PolicyObject *)Py_NewRef(policy);
    self->lock = (LockObject *)Py_NewRef(lock);
    self->clock = Py_NewRef(clock);
    self->weigh = Py_NewRef(weigh);
    self->weigher = Py_NewRef(weigher);
    self->slow = Py_NewRef(slow);
    self->reap = Py_NewRef(reap);
    self->notify = Py_NewRef(notify);
    self->default_weigher = default_weigher;
    return (PyObject *)self;
}

static int
WritePath_traverse(WritePathObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->policy);
    Py_VISIT(self->lock);
    Py_VISIT(self->clock);
    Py_VISIT(self->weigh);
    Py_VISIT(self->weigher);
    Py_VISIT(self->slow);
    Py_VISIT(self->reap);
    Py_VISIT(self->notify);
    return 0;
}

static int
WritePath_clear(WritePathObject *self)
{
    Py_CLEAR(self->policy);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->weigh);
    Py_CLEAR(self->weigher);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->reap);
    Py_CLEAR(self->notify);
    return 0;
}

static void
WritePath_dealloc(WritePathObject *self)
{
    PyObject_GC_UnTrack(self);
    WritePath_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject WritePathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stratacache.engine._accel.WritePath",
    .tp_doc = "Store.set, compiled: set(key, value, ttl=None) -> bool.",
    .tp_basicsize = sizeof(WritePathObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = WritePath_new,
    .tp_traverse = (traverseproc)WritePath_traverse,
    .tp_clear = (inquiry)WritePath_clear,
    .tp_dealloc = (destructor)WritePath_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(WritePathObject, vectorcall),
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
        PyType_Ready(&LockType) < 0 || PyType_Ready(&PolicyType) < 0 ||
        PyType_Ready(&ReadPathType) < 0 || PyType_Ready(&WritePathType) < 0)
        return NULL;
    str_time = PyUnicode_InternFromString("_time");
    str_levels = PyUnicode_InternFromString("_wheel");
    str_popitem = PyUnicode_InternFromString("popitem");
    str_getrandbits = PyUnicode_InternFromString("getrandbits");
    if (str_time == NULL || str_levels == NULL || str_popitem == NULL || str_getrandbits == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&accel_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Entry", (PyObject *)&EntryType) < 0 ||
        PyModule_AddObjectRef(m, "Sketch", (PyObject *)&SketchType) < 0 ||
        PyModule_AddObjectRef(m, "Lock", (PyObject *)&LockType) < 0 ||
        PyModule_AddObjectRef(m, "Policy", (PyObject *)&PolicyType) < 0 ||
        PyModule_AddObjectRef(m, "ReadPath", (PyObject *)&ReadPathType) < 0 ||
        PyModule_AddObjectRef(m, "WritePath", (PyObject *)&WritePathType) < 0 ||
        PyModule_AddIntConstant(m, "READ_BUFFER", READ_BUFFER) < 0 ||
        PyModule_AddIntConstant(m, "READ_SAMPLE", READ_SAMPLE) < 0 ||
        PyModule_AddIntConstant(m, "EXACT_READS", EXACT_READS) < 0 ||
        PyModule_AddIntConstant(m, "TRANSFER_LIMIT", TRANSFER_LIMIT) < 0 ||
        PyModule_AddIntConstant(m, "HASHDOS_THRESHOLD", HASHDOS_THRESHOLD) < 0 ||
        PyModule_AddIntConstant(m, "GROW_REACH", GROW_REACH) < 0 ||
        PyModule_AddIntConstant(m, "REFUSED_FLOOR_NUM", REFUSED_FLOOR_NUM) < 0 ||
        PyModule_AddIntConstant(m, "REFUSED_FLOOR_DEN", REFUSED_FLOOR_DEN) < 0 ||
        PyModule_AddIntConstant(m, "COUNTERS_PER_SLOT_BITS", COUNTERS_PER_SLOT_BITS) < 0 ||
        PyModule_AddIntConstant(m, "SHADOW_KEYS", SHADOW_KEYS) < 0 ||
        PyModule_AddIntConstant(m, "SHADOW_PERIOD", SHADOW_PERIOD) < 0 ||
        PyModule_AddIntConstant(m, "SHADOW_LEAD", SHADOW_LEAD) < 0 ||
        PyModule_AddIntConstant(m, "SHADOW_MEMORY", SHADOW_MEMORY) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
