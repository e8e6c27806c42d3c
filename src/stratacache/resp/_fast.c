/*
 * stratacache.resp._fast: the sidecar's hot path in C.
 *
 *   parse_requests(data, max_bulk_len) -> (commands, consumed)
 *       Splits the complete, canonical multibulk requests at the start of ``data`` into lists of
 *       bytes and stops at the first byte it is not sure of (an inline command, a partial request,
 *       a header it would have to judge, a bulk over the limit). The pure-Python reader parses
 *       from there, so limits and error texts stay that reader's (CompiledRequestReader).
 *
 *   Runner.serve(session, data, max_bulk_len) -> consumed
 *       One read of a plain session, start to end: parse each request, run it while it is a
 *       quick command, queue the replies on session.out, account for them (command stats, dirty,
 *       last command) and return how many bytes it used. The connection hands the rest (the
 *       first command that is not quick, a partial request) to the reader and Sidecar.feed, in
 *       order. Returns 0 when the session is not plain (MULTI, RESP2 subscriptions, CLIENT REPLY,
 *       pending or blocked commands, a backing Redis, a busy script, ...).
 *
 *   Runner.run(session, commands, start, out, ran, protocol, size, counted) -> index
 *       The same loop over already-parsed commands, for Sidecar.feed.
 *
 * GET, SET key value, INCR/DECR/INCRBY/DECRBY, MGET, LPUSH/RPUSH and HSET run natively on the
 * store's compiled get/set, step for step as their Python handlers, when no side condition
 * applies: nobody WATCHes, no keyspace notifications, no backing Redis's write log, and for the
 * lists no client blocked on any key. Otherwise, and for every other quick command, the Python
 * handler is called, so the handlers stay the reference. Replies that are not a bulk, an
 * integer, OK or null (errors included) are encoded by Python (``on_reply``), which also counts
 * errors; an exception in a handler becomes its error reply through Sidecar._error_reply.
 *
 * Every step mirrors the Python loop of Sidecar.feed; tests/resp/test_fast.py runs random command
 * sequences through both and compares replies and state.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define MAX_COUNT (1024 * 1024) /* larger multibulk headers go to the Python reader */
#define OUTPUT_SLICE (1024 * 1024)

/* ------------------------------------------------------------------------- parse_requests */

/* A decimal of 1..18 digits without a leading zero (Redis's string2ll, no sign); -1 if not. */
static long long
read_decimal(const char *p, Py_ssize_t n)
{
    if (n < 1 || n > 18 || (n > 1 && p[0] == '0'))
        return -1;
    long long v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* The position of the "\r\n" ending the header at ``pos`` (which starts with its type byte),
 * or -1 if the buffer ends first or the header is too long to be one this parser takes. */
static Py_ssize_t
header_end(const char *buf, Py_ssize_t pos, Py_ssize_t end)
{
    Py_ssize_t limit = pos + 21 < end ? pos + 21 : end;
    for (Py_ssize_t i = pos + 1; i < limit; i++) {
        if (buf[i] == '\r')
            return i + 1 < end && buf[i + 1] == '\n' ? i : -1;
    }
    return -1;
}

static PyObject *
parse_requests(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "parse_requests(data, max_bulk_len)");
        return NULL;
    }
    long long max_bulk = PyLong_AsLongLong(args[1]);
    if (max_bulk == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *buf = view.buf;
    Py_ssize_t end = view.len, pos = 0;
    PyObject *commands = PyList_New(0);
    if (commands == NULL)
        goto fail;
    while (pos < end && buf[pos] == '*') {
        Py_ssize_t cr = header_end(buf, pos, end);
        if (cr < 0)
            break;
        long long count = read_decimal(buf + pos + 1, cr - pos - 1);
        if (count < 1 || count > MAX_COUNT)
            break;
        Py_ssize_t at = cr + 2;
        /* First check that the whole request is here, then build it. */
        Py_ssize_t scan = at;
        long long i;
        for (i = 0; i < count; i++) {
            if (scan >= end || buf[scan] != '$')
                break;
            Py_ssize_t bcr = header_end(buf, scan, end);
            if (bcr < 0)
                break;
            long long len = read_decimal(buf + scan + 1, bcr - scan - 1);
            if (len < 0 || len > max_bulk)
                break;
            scan = bcr + 2;
            if (end - scan < len + 2 || buf[scan + len] != '\r' || buf[scan + len + 1] != '\n')
                break;
            scan += len + 2;
        }
        if (i < count)
            break;
        PyObject *argv = PyList_New((Py_ssize_t)count);
        if (argv == NULL)
            goto fail;
        for (i = 0; i < count; i++) {
            Py_ssize_t bcr = header_end(buf, at, end);
            long long len = read_decimal(buf + at + 1, bcr - at - 1);
            at = bcr + 2;
            PyObject *arg = PyBytes_FromStringAndSize(buf + at, (Py_ssize_t)len);
            if (arg == NULL) {
                Py_DECREF(argv);
                goto fail;
            }
            PyList_SET_ITEM(argv, (Py_ssize_t)i, arg);
            at += len + 2;
        }
        if (PyList_Append(commands, argv) < 0) {
            Py_DECREF(argv);
            goto fail;
        }
        Py_DECREF(argv);
        pos = at;
    }
    PyBuffer_Release(&view);
    PyObject *result = Py_BuildValue("(Nn)", commands, pos);
    return result;
fail:
    Py_XDECREF(commands);
    PyBuffer_Release(&view);
    return NULL;
}

/* --------------------------------------------------------------------------------- Runner */

enum { N_NONE, N_GET, N_SET, N_INCR, N_DECR, N_INCRBY, N_DECRBY, N_MGET, N_LPUSH, N_RPUSH, N_HSET };

typedef struct {
    PyObject *spec;
    PyObject *name; /* str, appended to ``ran`` */
    PyObject *handler;
    Py_ssize_t min_args, max_args;
    int write;
    int native;
    Py_ssize_t calls; /* run by the current serve(), not yet accounted */
} SpecInfo;

/* ---- attribute access without the generic lookup ----
 * Session and Database declare __slots__: their attributes are read at the slot's offset (the
 * member descriptor's), when the object is exactly that type. Keyspace and Sidecar keep theirs in
 * the instance __dict__, which is read directly when the type defines nothing of that name.
 * Anything else takes PyObject_GetAttr, so the result is always what Python would see. */

enum {
    SL_AUTHENTICATED, SL_MULTI, SL_REPLY_MODE, SL_BLOCKED, SL_PENDING, SL_CLOSING, SL_RESP,
    SL_CHANNELS, SL_PATTERNS, SL_OUT, SL_DB, SL_LAST_SEEN, SL_LAST_COMMAND, N_SESSION_SLOTS
};
static const char *session_slot_names[] = {
    "authenticated", "multi", "reply_mode", "blocked", "pending", "closing", "resp",
    "channels", "patterns", "out", "db", "last_seen", "last_command"};

typedef struct {
    PyTypeObject *type; /* borrowed from the runner's reference */
    Py_ssize_t offset[N_SESSION_SLOTS];
    PyObject *name[N_SESSION_SLOTS];
} SlotTable;

static int
slot_table_init(SlotTable *t, PyObject *type, const char **names, int n)
{
    t->type = NULL;
    for (int i = 0; i < n; i++) {
        t->offset[i] = -1;
        t->name[i] = PyUnicode_InternFromString(names[i]);
        if (t->name[i] == NULL)
            return -1;
    }
    if (type == NULL || !PyType_Check(type))
        return 0;
    for (int i = 0; i < n; i++) {
        PyObject *descr = _PyType_Lookup((PyTypeObject *)type, t->name[i]);
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type))
            continue;
        PyMemberDef *def = ((PyMemberDescrObject *)descr)->d_member;
        if ((def->type == T_OBJECT_EX || def->type == T_OBJECT) && !(def->flags & READONLY))
            t->offset[i] = def->offset;
    }
    t->type = (PyTypeObject *)type;
    return 0;
}

static void
slot_table_clear(SlotTable *t, int n)
{
    for (int i = 0; i < n; i++)
        Py_CLEAR(t->name[i]);
}

/* A new reference to obj.<slot i>, or NULL with an exception. */
static PyObject *
slot_get(SlotTable *t, PyObject *obj, int i)
{
    if (Py_TYPE(obj) == t->type && t->offset[i] >= 0) {
        PyObject *v = *(PyObject **)((char *)obj + t->offset[i]);
        if (v != NULL)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(obj, t->name[i]);
}

static int
slot_set(SlotTable *t, PyObject *obj, int i, PyObject *value)
{
    if (Py_TYPE(obj) == t->type && t->offset[i] >= 0) {
        PyObject **at = (PyObject **)((char *)obj + t->offset[i]);
        Py_XSETREF(*at, Py_NewRef(value));
        return 0;
    }
    return PyObject_SetAttr(obj, t->name[i], value);
}

/* The instance __dict__ of ``obj`` if every one of ``names`` is a plain instance attribute
 * there (the type defines none of them), else NULL (no exception). */
static PyObject *
plain_dict(PyObject *obj, PyObject **names, int n)
{
    for (int i = 0; i < n; i++)
        if (_PyType_Lookup(Py_TYPE(obj), names[i]) != NULL)
            return NULL;
    PyObject *dict = PyObject_GenericGetDict(obj, NULL);
    if (dict == NULL || !PyDict_CheckExact(dict)) {
        PyErr_Clear();
        Py_XDECREF(dict);
        return NULL;
    }
    return dict;
}

/* A new reference to obj.name, read from ``dict`` (plain_dict's) when there is one. */
static PyObject *
dict_get(PyObject *dict, PyObject *obj, PyObject *name)
{
    if (dict != NULL) {
        PyObject *v = PyDict_GetItemWithError(dict, name);
        if (v != NULL)
            return Py_NewRef(v);
        if (PyErr_Occurred())
            return NULL;
    }
    return PyObject_GetAttr(obj, name);
}

static int
dict_set(PyObject *dict, PyObject *obj, PyObject *name, PyObject *value)
{
    if (dict != NULL)
        return PyDict_SetItem(dict, name, value);
    return PyObject_SetAttr(obj, name, value);
}

typedef struct {
    PyObject_HEAD
    PyObject *sidecar;
    PyObject *keyspace;
    PyObject *sidecar_dict, *keyspace_dict; /* see plain_dict; NULL: use getattr */
    PyObject *session_type, *database_type;
    SlotTable session_slots, database_slots;
    PyObject *index; /* dict: command name (bytes, as sent) -> int index into specs */
    PyObject *ok;
    PyObject *error_type;
    PyObject *on_reply;     /* (spec, reply, protocol) -> bytes; counts error replies */
    PyObject *on_exception; /* (spec, exc) -> ErrorReply */
    PyObject *serve_ready;
    PyObject *wrongtype, *not_integer, *overflow, *decr_overflow; /* error messages (str) */
    PyObject *list_type, *hash_type; /* values.ListValue, values.HashValue */
    long long item_bytes, pair_bytes, key_overhead, reweigh_min; /* values/keyspace constants */
    SpecInfo *specs;
    Py_ssize_t nspecs;
    Py_ssize_t *touched; /* indexes of the specs with calls > 0 */
    Py_ssize_t ntouched;
    char *buf;
    Py_ssize_t len, cap;
    Py_ssize_t dirty, size, counted;
    int sliced;
} RunnerObject;

static PyObject *s_authenticated, *s_multi, *s_reply_mode, *s_resp, *s_channels, *s_patterns,
    *s_pending, *s_blocked, *s_closing, *s_backing, *s_min_replicas, *s_busy, *s_out,
    *s_command_stats, *s_commands_processed, *s_last_seen, *s_last_command;
static PyObject *s_items, *s_fields, *s_size, *s_weighed, *s_extend, *s_extendleft, *s_blocked_keys;
static PyObject *s_db, *s_store, *s_get, *s_set, *s_ttl, *s_notify_flags, *s_watched,
    *s_write_log, *s_ready, *s_now, *s_clock, *s_dirty;

static int
buf_reserve(RunnerObject *self, Py_ssize_t extra)
{
    if (self->len + extra <= self->cap)
        return 0;
    Py_ssize_t cap = self->cap ? self->cap : 4096;
    while (cap < self->len + extra)
        cap *= 2;
    char *grown = PyMem_Realloc(self->buf, (size_t)cap);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->buf = grown;
    self->cap = cap;
    return 0;
}

static int
buf_add(RunnerObject *self, const char *data, Py_ssize_t n)
{
    if (buf_reserve(self, n) < 0)
        return -1;
    memcpy(self->buf + self->len, data, (size_t)n);
    self->len += n;
    return 0;
}

static int
buf_bulk(RunnerObject *self, PyObject *bytes)
{
    Py_ssize_t n = PyBytes_GET_SIZE(bytes);
    if (buf_reserve(self, n + 32) < 0)
        return -1;
    self->len += sprintf(self->buf + self->len, "$%zd\r\n", n);
    memcpy(self->buf + self->len, PyBytes_AS_STRING(bytes), (size_t)n);
    self->len += n;
    self->buf[self->len++] = '\r';
    self->buf[self->len++] = '\n';
    return 0;
}

static int
buf_int(RunnerObject *self, long long v)
{
    if (buf_reserve(self, 32) < 0)
        return -1;
    self->len += sprintf(self->buf + self->len, ":%lld\r\n", v);
    return 0;
}

/* Move the buffered replies to ``out`` at ``at`` (-1: the end). */
static int
flush_to(RunnerObject *self, PyObject *out, Py_ssize_t at)
{
    if (self->len == 0)
        return 0;
    PyObject *data = PyBytes_FromStringAndSize(self->buf, self->len);
    if (data == NULL)
        return -1;
    self->len = 0;
    int rc = at < 0 ? PyList_Append(out, data) : PyList_Insert(out, at, data);
    Py_DECREF(data);
    return rc;
}

/* Insert the first ``mark`` buffered bytes into ``out`` at ``at`` and append the rest. */
static int
flush_split(RunnerObject *self, PyObject *out, Py_ssize_t at, Py_ssize_t mark)
{
    if (mark > 0) {
        PyObject *head = PyBytes_FromStringAndSize(self->buf, mark);
        if (head == NULL)
            return -1;
        int rc = PyList_Insert(out, at, head);
        Py_DECREF(head);
        if (rc < 0)
            return -1;
        memmove(self->buf, self->buf + mark, (size_t)(self->len - mark));
        self->len -= mark;
    }
    return flush_to(self, out, -1);
}

/* Python's encode/error accounting for a reply of any other kind; 1 if it was an error. */
static int
emit_other(RunnerObject *self, SpecInfo *info, PyObject *reply, PyObject *protocol)
{
    PyObject *args[3] = {info->spec, reply, protocol};
    PyObject *data = PyObject_Vectorcall(self->on_reply, args, 3, NULL);
    if (data == NULL)
        return -1;
    if (!PyBytes_Check(data)) {
        Py_DECREF(data);
        PyErr_SetString(PyExc_TypeError, "on_reply must return bytes");
        return -1;
    }
    int rc = buf_add(self, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
    Py_DECREF(data);
    if (rc < 0)
        return -1;
    return Py_IS_TYPE(reply, (PyTypeObject *)self->error_type) ? 1 : 0;
}

static int
emit_error(RunnerObject *self, SpecInfo *info, PyObject *message, PyObject *protocol)
{
    PyObject *reply = PyObject_CallOneArg(self->error_type, message);
    if (reply == NULL)
        return -1;
    int rc = emit_other(self, info, reply, protocol);
    Py_DECREF(reply);
    return rc;
}

/* The reply of a handler that raised: as Sidecar._error_reply makes it. BaseExceptions that are
 * not Exceptions (KeyboardInterrupt) propagate, as in Python. */
static int
emit_exception(RunnerObject *self, SpecInfo *info, PyObject *protocol)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL)
        PyException_SetTraceback(value, tb);
    PyObject *args[2] = {info->spec, value};
    PyObject *reply = PyObject_Vectorcall(self->on_exception, args, 2, NULL);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    if (reply == NULL)
        return -1;
    int rc = emit_other(self, info, reply, protocol);
    Py_DECREF(reply);
    return rc;
}

/* Encode a handler's reply; 1 if it was an error reply. */
static int
emit_reply(RunnerObject *self, SpecInfo *info, PyObject *reply, PyObject *protocol,
           const char *null, Py_ssize_t null_len)
{
    if (PyBytes_CheckExact(reply))
        return buf_bulk(self, reply);
    if (reply == self->ok)
        return buf_add(self, "+OK\r\n", 5);
    if (PyLong_CheckExact(reply)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(reply, &overflow);
        if (!overflow && !(v == -1 && PyErr_Occurred()))
            return buf_int(self, v);
        PyErr_Clear();
    }
    else if (reply == Py_None)
        return buf_add(self, null, null_len);
    return emit_other(self, info, reply, protocol);
}

/* Redis's string2ll, as values.parse_int: 0 on success. */
static int
parse_ll(PyObject *bytes, long long *out)
{
    const char *p = PyBytes_AS_STRING(bytes);
    Py_ssize_t n = PyBytes_GET_SIZE(bytes);
    int negative = 0;
    if (n == 0 || n > 20)
        return -1;
    if (p[0] == '-') {
        negative = 1;
        p++;
        n--;
        if (n == 0 || p[0] == '0')
            return -1;
    }
    else if (n > 1 && p[0] == '0')
        return -1;
    unsigned long long v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        unsigned long long next = v * 10 + (unsigned long long)(p[i] - '0');
        if (v > (ULLONG_MAX - 9) / 10)
            return -1;
        v = next;
    }
    if (negative) {
        if (v > (unsigned long long)INT64_MAX + 1)
            return -1;
        *out = v == (unsigned long long)INT64_MAX + 1 ? INT64_MIN : -(long long)v;
    }
    else {
        if (v > (unsigned long long)INT64_MAX)
            return -1;
        *out = (long long)v;
    }
    return 0;
}

/* Whether a write may skip Database.touch and notifications: nobody watches, no notifications
 * are enabled and no backing Redis logs the writes. -1 on error. */
static int
writes_are_plain(RunnerObject *self)
{
    PyObject *v = dict_get(self->keyspace_dict, self->keyspace, s_notify_flags);
    if (v == NULL)
        return -1;
    int plain = PyUnicode_Check(v) && PyUnicode_GET_LENGTH(v) == 0;
    Py_DECREF(v);
    if (!plain)
        return 0;
    v = dict_get(self->keyspace_dict, self->keyspace, s_watched);
    if (v == NULL)
        return -1;
    plain = PyDict_CheckExact(v) && PyDict_GET_SIZE(v) == 0;
    Py_DECREF(v);
    if (!plain)
        return 0;
    v = dict_get(self->keyspace_dict, self->keyspace, s_write_log);
    if (v == NULL)
        return -1;
    plain = v == Py_None;
    Py_DECREF(v);
    return plain;
}

typedef struct {
    PyObject *store;           /* session.db.store, looked up on first use */
    PyObject *get, *set, *ttl; /* its methods, each looked up on first use */
} StoreMethods;

static PyObject *
store_method(RunnerObject *self, StoreMethods *m, PyObject *session, PyObject **slot,
             PyObject *name)
{
    if (*slot != NULL)
        return *slot;
    if (m->store == NULL) {
        PyObject *db = slot_get(&self->session_slots, session, SL_DB);
        if (db == NULL)
            return NULL;
        m->store = slot_get(&self->database_slots, db, 0);
        Py_DECREF(db);
        if (m->store == NULL)
            return NULL;
    }
    *slot = PyObject_GetAttr(m->store, name);
    return *slot;
}

/*
 * One natively run command. Returns 0 (reply emitted, not an error), 1 (an error reply was
 * emitted), 2 (a side condition applies: run the Python handler instead; nothing was done),
 * -1 (an exception to report as the handler's).
 */
/* The TTL Database.set(keep_ttl=True) and Database._restore keep: store.ttl(key), absent or not
 * positive as None. A new reference, NULL on error. */
static PyObject *
kept_ttl(RunnerObject *self, StoreMethods *m, PyObject *session, PyObject *key)
{
    PyObject *method = store_method(self, m, session, &m->ttl, s_ttl);
    if (method == NULL)
        return NULL;
    PyObject *ttl = PyObject_Vectorcall(method, &key, 1, NULL);
    if (ttl == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError))
            return NULL;
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (ttl == Py_None)
        return ttl;
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL) {
        Py_DECREF(ttl);
        return NULL;
    }
    int positive = PyObject_RichCompareBool(ttl, zero, Py_GT);
    Py_DECREF(zero);
    if (positive <= 0) {
        Py_DECREF(ttl);
        if (positive < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    return ttl;
}

static int
store_set(RunnerObject *self, StoreMethods *m, PyObject *session, PyObject *key, PyObject *value,
          PyObject *ttl)
{
    PyObject *set = store_method(self, m, session, &m->set, s_set);
    if (set == NULL)
        return -1;
    PyObject *call[3] = {key, value, ttl};
    PyObject *stored = PyObject_Vectorcall(set, call, 3, NULL);
    if (stored == NULL)
        return -1;
    Py_DECREF(stored);
    return 0;
}

static int
attr_ll(PyObject *obj, PyObject *name, long long *out)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

static int
set_attr_ll(PyObject *obj, PyObject *name, long long value)
{
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL)
        return -1;
    int rc = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return rc;
}

/* Database.changed for a container that is not empty, when nobody watches or blocks: re-store
 * it with its TTL once its size drifted from the weight the store recorded. */
static int
container_changed(RunnerObject *self, StoreMethods *m, PyObject *session, PyObject *key,
                  PyObject *value, long long size)
{
    long long weighed;
    if (attr_ll(value, s_weighed, &weighed) < 0)
        return -1;
    long long drift = (long long)PyBytes_GET_SIZE(key) + size + self->key_overhead - weighed;
    if (drift < 0)
        drift = -drift;
    if (!(drift > self->reweigh_min && drift > (weighed >> 3)))
        return 0;
    PyObject *ttl = kept_ttl(self, m, session, key);
    if (ttl == NULL)
        return -1;
    int rc = store_set(self, m, session, key, value, ttl);
    Py_DECREF(ttl);
    return rc;
}

/* LPUSH/RPUSH (lists._push) and HSET (hashes.hset), step for step, when no client watches,
 * blocks or listens for notifications. 0, 1 (error reply) or -1, as run_native. */
static int
run_container(RunnerObject *self, SpecInfo *info, PyObject *session, PyObject *argv,
              StoreMethods *m, PyObject *get, PyObject *protocol)
{
    int native = info->native;
    PyObject *key = PyList_GET_ITEM(argv, 1);
    Py_ssize_t argc = PyList_GET_SIZE(argv);
    PyObject *kind = native == N_HSET ? self->hash_type : self->list_type;
    PyObject *value = PyObject_Vectorcall(get, &key, 1, NULL);
    if (value == NULL)
        return -1;
    int created = value == Py_None;
    if (created) {
        Py_DECREF(value);
        value = PyObject_CallNoArgs(kind);
        if (value == NULL)
            return -1;
    }
    else if ((PyObject *)Py_TYPE(value) != kind) {
        Py_DECREF(value);
        return emit_error(self, info, self->wrongtype, protocol);
    }
    long long size, reply;
    if (attr_ll(value, s_size, &size) < 0)
        goto fail;
    if (native == N_HSET) {
        PyObject *fields = PyObject_GetAttr(value, s_fields);
        if (fields == NULL)
            goto fail;
        if (!PyDict_CheckExact(fields)) {
            Py_DECREF(fields);
            PyErr_SetString(PyExc_TypeError, "HashValue.fields must be a dict");
            goto fail;
        }
        long long added = 0;
        for (Py_ssize_t i = 2; i + 1 < argc; i += 2) {
            PyObject *field = PyList_GET_ITEM(argv, i), *val = PyList_GET_ITEM(argv, i + 1);
            PyObject *old = PyDict_GetItemWithError(fields, field);
            if (old == NULL && PyErr_Occurred()) {
                Py_DECREF(fields);
                goto fail;
            }
            Py_XINCREF(old);
            if (PyDict_SetItem(fields, field, val) < 0) {
                Py_XDECREF(old);
                Py_DECREF(fields);
                goto fail;
            }
            if (old == NULL) {
                size += PyBytes_GET_SIZE(field) + PyBytes_GET_SIZE(val) + self->pair_bytes;
                added++;
            }
            else {
                Py_ssize_t old_len = PyObject_Length(old);
                Py_DECREF(old);
                if (old_len < 0) {
                    Py_DECREF(fields);
                    goto fail;
                }
                size += PyBytes_GET_SIZE(val) - old_len;
            }
        }
        Py_DECREF(fields);
        reply = added;
    }
    else {
        PyObject *items = PyObject_GetAttr(value, s_items);
        if (items == NULL)
            goto fail;
        PyObject *values = PyList_GetSlice(argv, 2, argc);
        PyObject *pushed = values == NULL ? NULL
                                          : PyObject_CallMethodOneArg(
                                                items, native == N_LPUSH ? s_extendleft : s_extend,
                                                values);
        Py_XDECREF(values);
        if (pushed == NULL) {
            Py_DECREF(items);
            goto fail;
        }
        Py_DECREF(pushed);
        for (Py_ssize_t i = 2; i < argc; i++)
            size += PyBytes_GET_SIZE(PyList_GET_ITEM(argv, i)) + self->item_bytes;
        Py_ssize_t length = PyObject_Length(items);
        Py_DECREF(items);
        if (length < 0)
            goto fail;
        reply = length;
    }
    if (set_attr_ll(value, s_size, size) < 0)
        goto fail;
    if (created) {
        if (store_set(self, m, session, key, value, Py_None) < 0)
            goto fail;
    }
    else if (container_changed(self, m, session, key, value, size) < 0)
        goto fail;
    Py_DECREF(value);
    return buf_int(self, reply);
fail:
    Py_DECREF(value);
    return -1;
}

static int
run_native(RunnerObject *self, SpecInfo *info, PyObject *session, PyObject *argv, StoreMethods *m,
           PyObject *protocol, const char *null, Py_ssize_t null_len)
{
    PyObject *key = PyList_GET_ITEM(argv, 1);
    int native = info->native;
    if (native == N_SET || native >= N_INCR) {
        if (native != N_MGET) {
            int plain = writes_are_plain(self);
            if (plain <= 0)
                return plain < 0 ? -1 : 2;
        }
    }
    if (native == N_SET && PyList_GET_SIZE(argv) != 3)
        return 2; /* SET with options: the handler parses them */
    if (native == N_HSET && PyList_GET_SIZE(argv) % 2)
        return 2; /* the handler's arity error */
    if (native == N_LPUSH || native == N_RPUSH) {
        /* A client blocked on some list: Database.changed must signal it. */
        PyObject *blocked = dict_get(self->keyspace_dict, self->keyspace, s_blocked_keys);
        if (blocked == NULL)
            return -1;
        int any = PyObject_IsTrue(blocked);
        Py_DECREF(blocked);
        if (any)
            return any < 0 ? -1 : 2;
    }
    PyObject *get = store_method(self, m, session, &m->get, s_get);
    if (get == NULL)
        return -1;
    switch (native) {
    case N_GET: {
        PyObject *value = PyObject_Vectorcall(get, &key, 1, NULL);
        if (value == NULL)
            return -1;
        int rc;
        if (PyBytes_CheckExact(value))
            rc = buf_bulk(self, value);
        else if (value == Py_None)
            rc = buf_add(self, null, null_len);
        else
            rc = emit_error(self, info, self->wrongtype, protocol);
        Py_DECREF(value);
        return rc;
    }
    case N_SET: {
        PyObject *call[3] = {key, PyList_GET_ITEM(argv, 2), Py_None};
        PyObject *set = store_method(self, m, session, &m->set, s_set);
        if (set == NULL)
            return -1;
        PyObject *stored = PyObject_Vectorcall(set, call, 3, NULL);
        if (stored == NULL)
            return -1;
        Py_DECREF(stored);
        return buf_add(self, "+OK\r\n", 5);
    }
    case N_MGET: {
        Py_ssize_t argc = PyList_GET_SIZE(argv);
        char header[32];
        int hn = sprintf(header, "*%zd\r\n", argc - 1);
        if (buf_add(self, header, hn) < 0)
            return -1;
        for (Py_ssize_t i = 1; i < argc; i++) {
            PyObject *k = PyList_GET_ITEM(argv, i);
            PyObject *value = PyObject_Vectorcall(get, &k, 1, NULL);
            if (value == NULL)
                return -1;
            int rc = PyBytes_CheckExact(value) ? buf_bulk(self, value)
                                               : buf_add(self, null, null_len);
            Py_DECREF(value);
            if (rc < 0)
                return -1;
        }
        return 0;
    }
    default:
        break;
    }
    if (native == N_LPUSH || native == N_RPUSH || native == N_HSET)
        return run_container(self, info, session, argv, m, get, protocol);
    /* INCR, DECR, INCRBY, DECRBY: strings._incr and its callers, step for step. */
    long long amount = native == N_DECR ? -1 : 1;
    if (native == N_INCRBY || native == N_DECRBY) {
        PyObject *raw = PyList_GET_ITEM(argv, 2);
        if (parse_ll(raw, &amount) < 0)
            return emit_error(self, info, self->not_integer, protocol);
        if (native == N_DECRBY) {
            if (amount == INT64_MIN)
                return emit_error(self, info, self->decr_overflow, protocol);
            amount = -amount;
        }
    }
    PyObject *current = PyObject_Vectorcall(get, &key, 1, NULL);
    if (current == NULL)
        return -1;
    long long number = 0;
    int existed = current != Py_None;
    if (existed) {
        if (!PyBytes_CheckExact(current)) {
            Py_DECREF(current);
            return emit_error(self, info, self->wrongtype, protocol);
        }
        int bad = parse_ll(current, &number);
        Py_DECREF(current);
        if (bad)
            return emit_error(self, info, self->not_integer, protocol);
    }
    else
        Py_DECREF(current);
    long long result;
    if (__builtin_add_overflow(number, amount, &result))
        return emit_error(self, info, self->overflow, protocol);
    /* Database.set(key, value, keep_ttl=existed) */
    PyObject *ttl = Py_None;
    Py_INCREF(ttl);
    if (existed) {
        Py_DECREF(ttl);
        PyObject *ttl_method = store_method(self, m, session, &m->ttl, s_ttl);
        ttl = ttl_method == NULL ? NULL : PyObject_Vectorcall(ttl_method, &key, 1, NULL);
        if (ttl == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_KeyError))
                return -1;
            PyErr_Clear();
            ttl = Py_None;
            Py_INCREF(ttl);
        }
        else if (ttl != Py_None) {
            int positive = 0;
            PyObject *zero = PyLong_FromLong(0);
            if (zero == NULL) {
                Py_DECREF(ttl);
                return -1;
            }
            positive = PyObject_RichCompareBool(ttl, zero, Py_GT);
            Py_DECREF(zero);
            if (positive < 0) {
                Py_DECREF(ttl);
                return -1;
            }
            if (!positive) {
                Py_DECREF(ttl);
                ttl = Py_None;
                Py_INCREF(ttl);
            }
        }
    }
    char digits[32];
    int dn = sprintf(digits, "%lld", result);
    PyObject *value = PyBytes_FromStringAndSize(digits, dn);
    if (value == NULL) {
        Py_DECREF(ttl);
        return -1;
    }
    PyObject *call[3] = {key, value, ttl};
    PyObject *set = store_method(self, m, session, &m->set, s_set);
    PyObject *stored = set == NULL ? NULL : PyObject_Vectorcall(set, call, 3, NULL);
    Py_DECREF(value);
    Py_DECREF(ttl);
    if (stored == NULL)
        return -1;
    Py_DECREF(stored);
    return buf_int(self, result);
}

typedef struct {
    PyObject *session, *out, *protocol;
    const char *null;
    Py_ssize_t null_len;
    StoreMethods m;
} RunState;

/* Run one quick command and queue its reply: the body of Sidecar.feed's quick branch.
 * 0: done; 1: it answered an error (no dirty, no ready keys); -1: an exception to propagate. */
static int
exec_command(RunnerObject *self, RunState *st, SpecInfo *info, PyObject *argv)
{
    PyObject *out = st->out;
    Py_ssize_t before = PyList_GET_SIZE(out);
    Py_ssize_t mark = self->len;
    int rc = 2;
    if (info->native != N_NONE)
        rc = run_native(self, info, st->session, argv, &st->m, st->protocol, st->null,
                        st->null_len);
    /* The native paths never make a key ready (strings, or lists with nobody blocked). */
    int native = rc != 2;
    if (rc == 2) {
        PyObject *call_args[2] = {st->session, argv};
        PyObject *reply = PyObject_Vectorcall(info->handler, call_args, 2, NULL);
        if (reply == NULL)
            rc = -1;
        else {
            rc = emit_reply(self, info, reply, st->protocol, st->null, st->null_len);
            Py_DECREF(reply);
        }
    }
    if (rc == -1)
        rc = emit_exception(self, info, st->protocol);
    if (rc == -1)
        return -1;
    if (PyList_GET_SIZE(out) != before) {
        /* The command queued messages of its own (a PUBLISH to this very client in RESP3):
         * the replies of the commands before it go first, its own reply last, as in Python. */
        if (flush_split(self, out, before, mark) < 0)
            return -1;
    }
    if (rc == 1)
        return 1;
    if (info->write)
        self->dirty++;
    if (native)
        return 0;
    PyObject *ready = dict_get(self->keyspace_dict, self->keyspace, s_ready);
    if (ready == NULL)
        return -1;
    int any = PyObject_IsTrue(ready);
    Py_DECREF(ready);
    if (any < 0)
        return -1;
    if (any) {
        if (flush_to(self, out, -1) < 0)
            return -1;
        PyObject *served = PyObject_CallNoArgs(self->serve_ready);
        if (served == NULL)
            return -1;
        Py_DECREF(served);
    }
    return 0;
}

static int
refresh_clock(RunnerObject *self)
{
    PyObject *clock = dict_get(self->keyspace_dict, self->keyspace, s_clock);
    if (clock == NULL)
        return -1;
    PyObject *now = PyObject_CallNoArgs(clock);
    Py_DECREF(clock);
    if (now == NULL)
        return -1;
    int rc = dict_set(self->keyspace_dict, self->keyspace, s_now, now);
    Py_DECREF(now);
    return rc;
}

/* The every-16-commands step: re-read the clock, add up the replies queued; 1 if they passed
 * OUTPUT_SLICE. */
static int
slice_check(RunnerObject *self, PyObject *out)
{
    if (refresh_clock(self) < 0 || flush_to(self, out, -1) < 0)
        return -1;
    Py_ssize_t total = PyList_GET_SIZE(out);
    for (Py_ssize_t i = self->counted; i < total; i++) {
        Py_ssize_t len = PyObject_Length(PyList_GET_ITEM(out, i));
        if (len < 0)
            return -1;
        self->size += len;
    }
    self->counted = total;
    return self->size > OUTPUT_SLICE;
}

static void
finish_state(RunnerObject *self, RunState *st, int failed)
{
    if (failed && self->len) {
        /* Keep what was answered before the failure. */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (flush_to(self, st->out, -1) < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
    }
    self->len = 0;
    Py_CLEAR(st->m.store);
    Py_CLEAR(st->m.get);
    Py_CLEAR(st->m.set);
    Py_CLEAR(st->m.ttl);
}

static int
init_state(RunState *st, PyObject *session, PyObject *out, PyObject *protocol)
{
    st->session = session;
    st->out = out;
    st->protocol = protocol;
    long proto = PyLong_AsLong(protocol);
    if (proto == -1 && PyErr_Occurred())
        return -1;
    st->null = proto == 3 ? "_\r\n" : "$-1\r\n";
    st->null_len = proto == 3 ? 3 : 5;
    st->m.store = st->m.get = st->m.set = st->m.ttl = NULL;
    return 0;
}

static PyObject *
Runner_run(RunnerObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "run(session, commands, start, out, ran, protocol, size, counted)");
        return NULL;
    }
    PyObject *commands = args[1], *out = args[3], *ran = args[4];
    if (!PyList_CheckExact(commands) || !PyList_CheckExact(out) || !PyList_CheckExact(ran)) {
        PyErr_SetString(PyExc_TypeError, "commands, out and ran must be lists");
        return NULL;
    }
    Py_ssize_t index = PyLong_AsSsize_t(args[2]);
    self->size = PyLong_AsSsize_t(args[6]);
    self->counted = PyLong_AsSsize_t(args[7]);
    if (PyErr_Occurred())
        return NULL;
    RunState st;
    if (init_state(&st, args[0], out, args[5]) < 0)
        return NULL;
    self->sliced = 0;
    self->len = 0;
    PyObject *result = NULL;
    Py_ssize_t n = PyList_GET_SIZE(commands);
    for (; index < n; index++) {
        PyObject *argv = PyList_GET_ITEM(commands, index);
        if (!PyList_CheckExact(argv) || PyList_GET_SIZE(argv) < 1)
            break;
        PyObject *found = PyDict_GetItemWithError(self->index, PyList_GET_ITEM(argv, 0));
        if (found == NULL) {
            if (PyErr_Occurred())
                goto done;
            break;
        }
        SpecInfo *info = &self->specs[PyLong_AsSsize_t(found)];
        Py_ssize_t argc = PyList_GET_SIZE(argv);
        if (argc < info->min_args || argc > info->max_args)
            break;
        if (PyList_Append(ran, info->name) < 0)
            goto done;
        int rc = exec_command(self, &st, info, argv);
        if (rc < 0)
            goto done;
        if (rc == 1)
            continue; /* an error reply skips the slice check, as in Python */
        if ((index & 15) == 15) {
            int sliced = slice_check(self, out);
            if (sliced < 0)
                goto done;
            if (sliced) {
                self->sliced = 1;
                index++;
                break;
            }
        }
    }
    if (flush_to(self, out, -1) < 0)
        goto done;
    result = PyLong_FromSsize_t(index);
done:
    finish_state(self, &st, result == NULL);
    return result;
}

/* ------------------------------------------------------------------------------- serve */



/* Sidecar.is_plain(session), plus nothing pending or blocked and not closing: the state in
 * which a read's quick commands may run here. Returns the protocol (2 or 3), 0 if not plain. */
static int
slot_is(RunnerObject *self, PyObject *session, int i, PyObject *expected)
{
    PyObject *v = slot_get(&self->session_slots, session, i);
    if (v == NULL)
        return -1;
    int same = v == expected;
    Py_DECREF(v);
    return same;
}

static int
slot_false(RunnerObject *self, PyObject *session, int i)
{
    PyObject *v = slot_get(&self->session_slots, session, i);
    if (v == NULL)
        return -1;
    int truth = PyObject_IsTrue(v);
    Py_DECREF(v);
    return truth < 0 ? -1 : !truth;
}

static int
sidecar_is(RunnerObject *self, PyObject *name, PyObject *expected)
{
    PyObject *v = dict_get(self->sidecar_dict, self->sidecar, name);
    if (v == NULL)
        return -1;
    int same = v == expected;
    Py_DECREF(v);
    return same;
}

/* Sidecar.is_plain(session), plus nothing pending or blocked and not closing: the state in
 * which a read's quick commands may run here. Returns the protocol (2 or 3), 0 if not plain. */
static int
session_plain(RunnerObject *self, PyObject *session)
{
    int ok;
    if ((ok = slot_is(self, session, SL_AUTHENTICATED, Py_True)) != 1)
        return ok;
    if ((ok = slot_is(self, session, SL_MULTI, Py_None)) != 1)
        return ok;
    if ((ok = slot_false(self, session, SL_REPLY_MODE)) != 1) /* REPLY_ON is 0 */
        return ok;
    if ((ok = slot_is(self, session, SL_BLOCKED, Py_None)) != 1)
        return ok;
    if ((ok = slot_false(self, session, SL_PENDING)) != 1)
        return ok;
    if ((ok = slot_false(self, session, SL_CLOSING)) != 1)
        return ok;
    if ((ok = sidecar_is(self, s_backing, Py_None)) != 1)
        return ok;
    PyObject *v = dict_get(self->sidecar_dict, self->sidecar, s_min_replicas);
    if (v == NULL)
        return -1;
    int truth = PyObject_IsTrue(v);
    Py_DECREF(v);
    if (truth != 0)
        return truth < 0 ? -1 : 0;
    if ((ok = sidecar_is(self, s_busy, Py_None)) != 1)
        return ok;
    PyObject *resp = slot_get(&self->session_slots, session, SL_RESP);
    if (resp == NULL)
        return -1;
    long proto = PyLong_AsLong(resp);
    Py_DECREF(resp);
    if (proto == -1 && PyErr_Occurred())
        return -1;
    if (proto != 2 && proto != 3)
        return 0;
    if (proto == 2) {
        if ((ok = slot_false(self, session, SL_CHANNELS)) != 1)
            return ok;
        if ((ok = slot_false(self, session, SL_PATTERNS)) != 1)
            return ok;
    }
    return (int)proto;
}

/* ``number + amount`` as a new int, on the C fast path when it fits in 64 bits. */
static PyObject *
add_int(PyObject *number, long long amount)
{
    if (PyLong_CheckExact(number)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(number, &overflow);
        long long sum;
        if (!overflow && !(v == -1 && PyErr_Occurred()) && !__builtin_add_overflow(v, amount, &sum))
            return PyLong_FromLongLong(sum);
        PyErr_Clear();
    }
    PyObject *delta = PyLong_FromLongLong(amount);
    if (delta == NULL)
        return NULL;
    PyObject *sum = PyNumber_Add(number, delta);
    Py_DECREF(delta);
    return sum;
}

static int
add_to_attr(RunnerObject *self, PyObject *name, Py_ssize_t amount)
{
    PyObject *obj = self->sidecar;
    PyObject *v = dict_get(self->sidecar_dict, obj, name);
    if (v == NULL)
        return -1;
    PyObject *sum = add_int(v, amount);
    Py_DECREF(v);
    if (sum == NULL)
        return -1;
    int rc = dict_set(self->sidecar_dict, obj, name, sum);
    Py_DECREF(sum);
    return rc;
}

static int
add_to_item(PyObject *list, Py_ssize_t i, long long amount)
{
    PyObject *sum = add_int(PyList_GET_ITEM(list, i), amount);
    if (sum == NULL)
        return -1;
    return PyList_SetItem(list, i, sum); /* steals sum */
}

/* Sidecar._account for the commands a serve() ran: calls, an equal share of the time, and the
 * session's last command; plus Sidecar.dirty. */
static int
account(RunnerObject *self, PyObject *session, Py_ssize_t count, long long elapsed,
        SpecInfo *last)
{
    if (add_to_attr(self, s_commands_processed, count) < 0)
        return -1;
    long long share = elapsed / count;
    PyObject *stats_map = dict_get(self->sidecar_dict, self->sidecar, s_command_stats);
    if (stats_map == NULL)
        return -1;
    for (Py_ssize_t t = 0; t < self->ntouched; t++) {
        SpecInfo *info = &self->specs[self->touched[t]];
        Py_ssize_t calls = info->calls;
        info->calls = 0;
        PyObject *stats = PyObject_GetItem(stats_map, info->name); /* a defaultdict */
        if (stats == NULL || !PyList_Check(stats) || PyList_GET_SIZE(stats) < 2) {
            if (stats != NULL)
                PyErr_SetString(PyExc_TypeError, "command_stats entries must be lists");
            Py_XDECREF(stats);
            Py_DECREF(stats_map);
            return -1;
        }
        int rc = add_to_item(stats, 0, calls) < 0 || add_to_item(stats, 1, share * calls) < 0;
        Py_DECREF(stats);
        if (rc) {
            Py_DECREF(stats_map);
            return -1;
        }
    }
    Py_DECREF(stats_map);
    self->ntouched = 0;
    PyObject *now = dict_get(self->keyspace_dict, self->keyspace, s_now);
    if (now == NULL)
        return -1;
    int rc = slot_set(&self->session_slots, session, SL_LAST_SEEN, now);
    Py_DECREF(now);
    if (rc < 0 || slot_set(&self->session_slots, session, SL_LAST_COMMAND, last->name) < 0)
        return -1;
    if (self->dirty) {
        rc = add_to_attr(self, s_dirty, self->dirty);
        self->dirty = 0;
        if (rc < 0)
            return -1;
    }
    return 0;
}

static long long
monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The complete canonical request at ``pos`` as a list of bytes; NULL (no error) if there is
 * none there; ``*next`` is where the following request starts. */
static PyObject *
parse_one(const char *buf, Py_ssize_t pos, Py_ssize_t end, long long max_bulk, Py_ssize_t *next)
{
    if (pos >= end || buf[pos] != '*')
        return NULL;
    Py_ssize_t cr = header_end(buf, pos, end);
    if (cr < 0)
        return NULL;
    long long count = read_decimal(buf + pos + 1, cr - pos - 1);
    if (count < 1 || count > MAX_COUNT)
        return NULL;
    Py_ssize_t at = cr + 2, scan = at;
    for (long long i = 0; i < count; i++) {
        if (scan >= end || buf[scan] != '$')
            return NULL;
        Py_ssize_t bcr = header_end(buf, scan, end);
        if (bcr < 0)
            return NULL;
        long long len = read_decimal(buf + scan + 1, bcr - scan - 1);
        if (len < 0 || len > max_bulk)
            return NULL;
        scan = bcr + 2;
        if (end - scan < len + 2 || buf[scan + len] != '\r' || buf[scan + len + 1] != '\n')
            return NULL;
        scan += len + 2;
    }
    PyObject *argv = PyList_New((Py_ssize_t)count);
    if (argv == NULL)
        return NULL;
    for (long long i = 0; i < count; i++) {
        Py_ssize_t bcr = header_end(buf, at, end);
        long long len = read_decimal(buf + at + 1, bcr - at - 1);
        at = bcr + 2;
        PyObject *arg = PyBytes_FromStringAndSize(buf + at, (Py_ssize_t)len);
        if (arg == NULL) {
            Py_DECREF(argv);
            return NULL;
        }
        PyList_SET_ITEM(argv, (Py_ssize_t)i, arg);
        at += len + 2;
    }
    *next = at;
    return argv;
}

/*
 * serve(session, data, max_bulk_len) -> consumed
 *
 * One read of a plain session, start to end in C: parse the complete requests at the start of
 * ``data``, run them while they are quick commands, queue the replies on ``session.out`` and
 * account for them, and return how many bytes were used. The caller hands the rest (a command
 * that is not quick, a partial request, anything unusual) to the request reader and
 * Sidecar.feed, in order. Returns 0 at once when the session is not plain.
 */
static PyObject *
Runner_serve(RunnerObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "serve(session, data, max_bulk_len)");
        return NULL;
    }
    PyObject *session = args[0];
    long long max_bulk = PyLong_AsLongLong(args[2]);
    if (max_bulk == -1 && PyErr_Occurred())
        return NULL;
    int proto = session_plain(self, session);
    if (proto <= 0)
        return proto < 0 ? NULL : PyLong_FromLong(0);
    PyObject *out = slot_get(&self->session_slots, session, SL_OUT);
    if (out == NULL)
        return NULL;
    if (!PyList_CheckExact(out)) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_TypeError, "session.out must be a list");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    PyObject *protocol = PyLong_FromLong(proto);
    RunState st;
    PyObject *result = NULL;
    const char *buf = view.buf;
    Py_ssize_t end = view.len, pos = 0, index = 0;
    SpecInfo *last = NULL;
    if (protocol == NULL || init_state(&st, session, out, protocol) < 0) {
        Py_XDECREF(protocol);
        PyBuffer_Release(&view);
        Py_DECREF(out);
        return NULL;
    }
    self->len = 0;
    self->size = 0;
    self->counted = 0;
    self->ntouched = 0;
    long long started = monotonic_ns();
    if (refresh_clock(self) < 0)
        goto done;
    while (pos < end) {
        Py_ssize_t next;
        PyObject *argv = parse_one(buf, pos, end, max_bulk, &next);
        if (argv == NULL) {
            if (PyErr_Occurred())
                goto done;
            break;
        }
        PyObject *found = PyDict_GetItemWithError(self->index, PyList_GET_ITEM(argv, 0));
        SpecInfo *info = NULL;
        if (found != NULL) {
            info = &self->specs[PyLong_AsSsize_t(found)];
            Py_ssize_t argc = PyList_GET_SIZE(argv);
            if (argc < info->min_args || argc > info->max_args)
                info = NULL;
        }
        if (info == NULL) {
            Py_DECREF(argv);
            if (PyErr_Occurred())
                goto done;
            break;
        }
        if (info->calls++ == 0)
            self->touched[self->ntouched++] = info - self->specs;
        last = info;
        int rc = exec_command(self, &st, info, argv);
        Py_DECREF(argv);
        if (rc < 0)
            goto done;
        pos = next;
        if (rc == 0 && (index & 15) == 15) {
            int sliced = slice_check(self, out);
            if (sliced < 0)
                goto done;
            if (sliced) {
                index++;
                break; /* the rest goes through Sidecar.feed, which defers it */
            }
        }
        index++;
    }
    if (flush_to(self, out, -1) < 0)
        goto done;
    result = PyLong_FromSsize_t(pos);
done:
    finish_state(self, &st, result == NULL);
    if (last != NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (account(self, session, index + (result == NULL ? 1 : 0), monotonic_ns() - started,
                    last) < 0) {
            if (type != NULL)
                PyErr_Clear();
            else {
                Py_CLEAR(result);
                PyErr_Fetch(&type, &value, &tb);
            }
        }
        PyErr_Restore(type, value, tb);
    }
    for (Py_ssize_t t = 0; t < self->ntouched; t++)
        self->specs[self->touched[t]].calls = 0;
    self->ntouched = 0;
    Py_DECREF(protocol);
    PyBuffer_Release(&view);
    Py_DECREF(out);
    return result;
}

static const char *native_names[] = {"",     "get",   "set",   "incr",  "decr", "incrby",
                                      "decrby", "mget", "lpush", "rpush", "hset"};

static int
Runner_traverse(RunnerObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->sidecar);
    Py_VISIT(self->sidecar_dict);
    Py_VISIT(self->keyspace_dict);
    Py_VISIT(self->session_type);
    Py_VISIT(self->database_type);
    Py_VISIT(self->keyspace);
    Py_VISIT(self->index);
    Py_VISIT(self->ok);
    Py_VISIT(self->error_type);
    Py_VISIT(self->on_reply);
    Py_VISIT(self->on_exception);
    Py_VISIT(self->serve_ready);
    Py_VISIT(self->list_type);
    Py_VISIT(self->hash_type);
    for (Py_ssize_t i = 0; i < self->nspecs; i++) {
        Py_VISIT(self->specs[i].spec);
        Py_VISIT(self->specs[i].handler);
    }
    return 0;
}

static int
Runner_clear(RunnerObject *self)
{
    Py_CLEAR(self->sidecar);
    Py_CLEAR(self->sidecar_dict);
    Py_CLEAR(self->keyspace_dict);
    Py_CLEAR(self->session_type);
    Py_CLEAR(self->database_type);
    slot_table_clear(&self->session_slots, N_SESSION_SLOTS);
    slot_table_clear(&self->database_slots, 1);
    Py_CLEAR(self->keyspace);
    Py_CLEAR(self->index);
    Py_CLEAR(self->ok);
    Py_CLEAR(self->error_type);
    Py_CLEAR(self->on_reply);
    Py_CLEAR(self->on_exception);
    Py_CLEAR(self->serve_ready);
    Py_CLEAR(self->wrongtype);
    Py_CLEAR(self->not_integer);
    Py_CLEAR(self->overflow);
    Py_CLEAR(self->decr_overflow);
    Py_CLEAR(self->list_type);
    Py_CLEAR(self->hash_type);
    if (self->specs != NULL) {
        for (Py_ssize_t i = 0; i < self->nspecs; i++) {
            Py_CLEAR(self->specs[i].spec);
            Py_CLEAR(self->specs[i].name);
            Py_CLEAR(self->specs[i].handler);
        }
        PyMem_Free(self->specs);
        self->specs = NULL;
    }
    self->nspecs = 0;
    return 0;
}

static void
Runner_dealloc(RunnerObject *self)
{
    PyObject_GC_UnTrack(self);
    Runner_clear(self);
    PyMem_Free(self->buf);
    PyMem_Free(self->touched);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t
attr_ssize(PyObject *obj, const char *name)
{
    PyObject *v = PyObject_GetAttrString(obj, name);
    if (v == NULL)
        return -1;
    Py_ssize_t r = PyLong_AsSsize_t(v);
    Py_DECREF(v);
    return r;
}

static PyObject *
Runner_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *session_type, *database_type;
    PyObject *sidecar, *keyspace, *quick, *natives, *ok, *error_type, *on_reply, *on_exception, *serve_ready;
    PyObject *wrongtype, *not_integer, *overflow, *decr_overflow, *list_type, *hash_type;
    long long item_bytes, pair_bytes, key_overhead, reweigh_min;
    static char *kwlist[] = {"session_type", "database_type", "sidecar", "keyspace", "quick", "natives", "ok", "error_type", "on_reply",
                             "on_exception", "serve_ready", "wrongtype", "not_integer",
                             "overflow", "decr_overflow", "containers", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "$OOOOO!O!OOOOOUUUU(OOLLLL)", kwlist, &session_type, &database_type, &sidecar, &keyspace,
                                     &PyDict_Type, &quick, &PyDict_Type, &natives, &ok,
                                     &error_type, &on_reply, &on_exception, &serve_ready,
                                     &wrongtype, &not_integer, &overflow, &decr_overflow, &list_type,
                                     &hash_type, &item_bytes, &pair_bytes, &key_overhead,
                                     &reweigh_min))
        return NULL;
    if (!PyType_Check(error_type)) {
        PyErr_SetString(PyExc_TypeError, "error_type must be a type");
        return NULL;
    }
    RunnerObject *self = (RunnerObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->sidecar = Py_NewRef(sidecar);
    self->session_type = Py_NewRef(session_type);
    self->database_type = Py_NewRef(database_type);
    static const char *database_slot_names[] = {"store"};
    if (slot_table_init(&self->session_slots, session_type, session_slot_names,
                        N_SESSION_SLOTS) < 0 ||
        slot_table_init(&self->database_slots, database_type, database_slot_names, 1) < 0)
        goto fail;
    PyObject *sidecar_names[] = {s_backing, s_min_replicas, s_busy, s_dirty, s_commands_processed,
                                 s_command_stats};
    PyObject *keyspace_names[] = {s_notify_flags, s_watched, s_write_log, s_ready, s_now, s_clock};
    self->sidecar_dict = plain_dict(sidecar, sidecar_names, 6);
    self->keyspace_dict = plain_dict(keyspace, keyspace_names, 6);
    self->keyspace = Py_NewRef(keyspace);
    self->ok = Py_NewRef(ok);
    self->error_type = Py_NewRef(error_type);
    self->on_reply = Py_NewRef(on_reply);
    self->on_exception = Py_NewRef(on_exception);
    self->serve_ready = Py_NewRef(serve_ready);
    self->wrongtype = Py_NewRef(wrongtype);
    self->not_integer = Py_NewRef(not_integer);
    self->overflow = Py_NewRef(overflow);
    self->decr_overflow = Py_NewRef(decr_overflow);
    self->list_type = Py_NewRef(list_type);
    self->hash_type = Py_NewRef(hash_type);
    self->item_bytes = item_bytes;
    self->pair_bytes = pair_bytes;
    self->key_overhead = key_overhead;
    self->reweigh_min = reweigh_min;
    self->index = PyDict_New();
    Py_ssize_t size = PyDict_GET_SIZE(quick);
    self->specs = PyMem_Calloc(size ? (size_t)size : 1, sizeof(SpecInfo));
    self->touched = PyMem_Calloc(size ? (size_t)size : 1, sizeof(Py_ssize_t));
    if (self->index == NULL || self->specs == NULL || self->touched == NULL)
        goto fail;
    Py_ssize_t pos = 0;
    PyObject *name, *spec;
    while (PyDict_Next(quick, &pos, &name, &spec)) {
        SpecInfo *info = &self->specs[self->nspecs];
        info->spec = Py_NewRef(spec);
        self->nspecs++;
        info->name = PyObject_GetAttrString(spec, "name");
        info->handler = PyObject_GetAttrString(spec, "handler");
        if (info->name == NULL || info->handler == NULL)
            goto fail;
        if (!PyUnicode_Check(info->name) || info->handler == Py_None) {
            PyErr_SetString(PyExc_TypeError, "a quick spec needs a name and a handler");
            goto fail;
        }
        PyUnicode_InternInPlace(&info->name);
        info->min_args = attr_ssize(spec, "min_args");
        info->max_args = attr_ssize(spec, "max_args");
        if (PyErr_Occurred())
            goto fail;
        PyObject *write = PyObject_GetAttrString(spec, "write");
        if (write == NULL)
            goto fail;
        info->write = PyObject_IsTrue(write);
        Py_DECREF(write);
        if (info->write < 0)
            goto fail;
        /* Native only when the spec's handler is the one the native code was written after. */
        PyObject *reference = PyDict_GetItemWithError(natives, info->name);
        if (reference == NULL && PyErr_Occurred())
            goto fail;
        if (reference == info->handler) {
            for (int n = N_GET; n <= N_HSET; n++)
                if (PyUnicode_CompareWithASCIIString(info->name, native_names[n]) == 0)
                    info->native = n;
        }
        PyObject *at = PyLong_FromSsize_t(self->nspecs - 1);
        if (at == NULL || PyDict_SetItem(self->index, name, at) < 0) {
            Py_XDECREF(at);
            goto fail;
        }
        Py_DECREF(at);
    }
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

static PyObject *
Runner_take_dirty(RunnerObject *self, PyObject *unused)
{
    Py_ssize_t dirty = self->dirty;
    self->dirty = 0;
    return PyLong_FromSsize_t(dirty);
}

static PyMethodDef Runner_methods[] = {
    {"run", (PyCFunction)(void (*)(void))Runner_run, METH_FASTCALL,
     "run(session, commands, start, out, ran, protocol, size, counted) -> next index"},
    {"serve", (PyCFunction)(void (*)(void))Runner_serve, METH_FASTCALL,
     "serve(session, data, max_bulk_len) -> bytes consumed (0 if the session is not plain)"},
    {"take_dirty", (PyCFunction)Runner_take_dirty, METH_NOARGS,
     "The writes counted since the last call (for Sidecar.dirty), reset to 0."},
    {NULL},
};

static PyMemberDef Runner_members[] = {
    {"size", T_PYSSIZET, offsetof(RunnerObject, size), READONLY,
     "replies queued in this feed, in bytes, as of the last check"},
    {"counted", T_PYSSIZET, offsetof(RunnerObject, counted), READONLY,
     "how many items of ``out`` ``size`` accounts for"},
    {"sliced", T_INT, offsetof(RunnerObject, sliced), READONLY,
     "whether the last run stopped because the replies passed OUTPUT_SLICE"},
    {NULL},
};

static PyTypeObject RunnerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stratacache.resp._fast.Runner",
    .tp_doc = "Sidecar.feed's fast-path loop in C.",
    .tp_basicsize = sizeof(RunnerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Runner_new,
    .tp_traverse = (traverseproc)Runner_traverse,
    .tp_clear = (inquiry)Runner_clear,
    .tp_dealloc = (destructor)Runner_dealloc,
    .tp_methods = Runner_methods,
    .tp_members = Runner_members,
};

/* --------------------------------------------------------------------------------- Weigher */

/* values.weigh in C: key + value bytes + a per-key overhead; containers report their ``size``
 * and get the weight recorded in their ``weighed``. The store calls it on every write. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Py_ssize_t key_overhead;
} WeigherObject;

static PyObject *s_size_w, *s_weighed_w;

static PyObject *
Weigher_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    WeigherObject *self = (WeigherObject *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 2 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "weigh(key, value) takes 2 positional arguments");
        return NULL;
    }
    PyObject *key = args[0], *value = args[1];
    if (PyBytes_CheckExact(value) && PyBytes_CheckExact(key))
        return PyLong_FromSsize_t(PyBytes_GET_SIZE(key) + PyBytes_GET_SIZE(value) +
                                  self->key_overhead);
    Py_ssize_t key_size = 8;
    if (PyBytes_Check(key) || PyUnicode_Check(key)) {
        key_size = PyObject_Length(key);
        if (key_size < 0)
            return NULL;
    }
    if (PyBytes_CheckExact(value))
        return PyLong_FromSsize_t(key_size + PyBytes_GET_SIZE(value) + self->key_overhead);
    PyObject *size = PyObject_GetAttr(value, s_size_w);
    if (size == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return NULL;
        PyErr_Clear();
        size = PyLong_FromLong(0);
        if (size == NULL)
            return NULL;
    }
    PyObject *base = PyLong_FromSsize_t(key_size + self->key_overhead);
    if (base == NULL) {
        Py_DECREF(size);
        return NULL;
    }
    PyObject *weight = PyNumber_Add(base, size);
    Py_DECREF(base);
    Py_DECREF(size);
    if (weight == NULL)
        return NULL;
    PyObject *current = PyObject_GetAttr(value, s_weighed_w);
    if (current == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            Py_DECREF(weight);
            return NULL;
        }
        PyErr_Clear();
        return weight;
    }
    Py_DECREF(current);
    if (PyObject_SetAttr(value, s_weighed_w, weight) < 0) {
        Py_DECREF(weight);
        return NULL;
    }
    return weight;
}

static PyObject *
Weigher_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Py_ssize_t key_overhead;
    static char *kwlist[] = {"key_overhead", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n", kwlist, &key_overhead))
        return NULL;
    WeigherObject *self = (WeigherObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = Weigher_vectorcall;
    self->key_overhead = key_overhead;
    return (PyObject *)self;
}

static PyTypeObject WeigherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stratacache.resp._fast.Weigher",
    .tp_doc = "Weigher(key_overhead): values.weigh in C.",
    .tp_basicsize = sizeof(WeigherObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = Weigher_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(WeigherObject, vectorcall),
};

static PyMethodDef module_methods[] = {
    {"parse_requests", (PyCFunction)(void (*)(void))parse_requests, METH_FASTCALL,
     "parse_requests(data, max_bulk_len) -> (commands, consumed)"},
    {NULL},
};

static struct PyModuleDef fast_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "stratacache.resp._fast",
    .m_doc = "The RESP sidecar's hot path in C (see _fast.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__fast(void)
{
#define INTERN(var, text)                                                                        \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                        \
        return NULL;
    INTERN(s_db, "db");
    INTERN(s_store, "store");
    INTERN(s_get, "get");
    INTERN(s_set, "set");
    INTERN(s_ttl, "ttl");
    INTERN(s_notify_flags, "notify_flags");
    INTERN(s_watched, "watched");
    INTERN(s_write_log, "write_log");
    INTERN(s_ready, "ready");
    INTERN(s_now, "now");
    INTERN(s_clock, "clock");
    INTERN(s_dirty, "dirty");
    INTERN(s_items, "items");
    INTERN(s_fields, "fields");
    INTERN(s_size, "size");
    INTERN(s_weighed, "weighed");
    INTERN(s_extend, "extend");
    INTERN(s_extendleft, "extendleft");
    INTERN(s_blocked_keys, "blocked");
    INTERN(s_authenticated, "authenticated");
    INTERN(s_multi, "multi");
    INTERN(s_reply_mode, "reply_mode");
    INTERN(s_resp, "resp");
    INTERN(s_channels, "channels");
    INTERN(s_patterns, "patterns");
    INTERN(s_pending, "pending");
    INTERN(s_blocked, "blocked");
    INTERN(s_closing, "closing");
    INTERN(s_backing, "backing");
    INTERN(s_min_replicas, "min_replicas");
    INTERN(s_busy, "busy");
    INTERN(s_out, "out");
    INTERN(s_command_stats, "command_stats");
    INTERN(s_commands_processed, "commands_processed");
    INTERN(s_last_seen, "last_seen");
    INTERN(s_last_command, "last_command");
#undef INTERN
    if ((s_size_w = PyUnicode_InternFromString("size")) == NULL ||
        (s_weighed_w = PyUnicode_InternFromString("weighed")) == NULL)
        return NULL;
    if (PyType_Ready(&RunnerType) < 0 || PyType_Ready(&WeigherType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&fast_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Runner", (PyObject *)&RunnerType) < 0 ||
        PyModule_AddObjectRef(module, "Weigher", (PyObject *)&WeigherType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
