/* safeload._vmfast: the restricted VM's hot opcodes, compiled.
 *
 * Strategy: run() executes opcodes of one pickle on the Python VM's own
 * state (its stack list, metastack list and memo dict) for as long as every
 * opcode is one of a fixed set of pure-data opcodes *and* is sure to succeed.
 * At the first opcode that is anything else -- a global, STOP, an unknown
 * byte -- or that would fail or touch a bound (argument past the end, memo
 * key never stored, memo / nesting / item / length limit reached, invalid
 * UTF-8, too few values, a container that is not the exact builtin type), it
 * returns *without executing that opcode*, and the Python VM runs it with its
 * own handler and its own error message. Two opcodes that run Python code
 * anyway, a persistent id and a call of an allowlist entry (three per tensor
 * of a state dict), it runs by calling that same Python code itself, which
 * decides everything about them. So this file never decides a verdict and
 * never raises a SafeloadError: it only does, faster, what the Python
 * handlers of the same opcodes would do on the happy path.
 *
 * Security argument, in full:
 * - every read of the pickle is bounds-checked against its length before it
 *   happens (need());
 * - only exact list / dict / OrderedDict / tuple / str / int / float objects
 *   are made or changed, and the keys it hashes are ints and exact strs,
 *   whose hash and compare are builtin. Python code runs only where the
 *   Python handler of the same opcode runs it too: the __del__ of a value
 *   whose last reference an opcode drops (a dict value or memo entry
 *   replaced, the items of a MARK freed), the __eq__ of a key already in a
 *   target dict whose hash equals a new str key's, and the two calls below.
 *   Across those calls every object used is held by a reference of run()'s
 *   own, and lengths are read again after them;
 * - BINPERSID calls the VM's persistent_load with the top of the stack, and
 *   REDUCE on an allowlist entry (`handler_type`, exactly) calls the entry's
 *   reduce(vm, args) -- what the policy's call does for one; the caller
 *   passes handler_type only when the policy's call is exactly that. Anything
 *   else about them (an empty stack, arguments not a tuple, an entry that may
 *   not be called, a trusted or refused callable) goes to Python. Before each
 *   call vm.op_offset and vm.stack are set as the Python dispatch sets them,
 *   and after it vm.stack is read again as the Python loop reads it;
 * - limits are checked before the change, conservatively (a value at the
 *   bound goes back to Python, which decides);
 * - it runs at most `budget` opcodes per call, so the Python loop's opcode and
 *   stack bounds are checked exactly as often as without it;
 * - a failed allocation, or any exception a called handler raises, comes back
 *   with the offset of the opcode that failed (and the stack it was
 *   changing), which the Python loop raises there, as its own dispatch would.
 * SAFELOAD_PURE_PYTHON=1 disables it; the test suites run both ways.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#if PY_VERSION_HEX < 0x030B0000
#define Unpack8(p) _PyFloat_Unpack8((const unsigned char *)(p), 0)
#else
#define Unpack8(p) PyFloat_Unpack8((const char *)(p), 0)
#endif

/* opcode bytes (pickletools names) */
enum {
    OP_MARK = '(', OP_BININT = 'J', OP_BININT1 = 'K', OP_BININT2 = 'M',
    OP_NONE = 'N', OP_BINUNICODE = 'X', OP_SHORT_BINUNICODE = 0x8c,
    OP_APPEND = 'a', OP_APPENDS = 'e', OP_BINGET = 'h', OP_LONG_BINGET = 'j',
    OP_EMPTY_LIST = ']', OP_BINPUT = 'q', OP_LONG_BINPUT = 'r', OP_MEMOIZE = 0x94,
    OP_SETITEM = 's', OP_SETITEMS = 'u', OP_TUPLE = 't', OP_EMPTY_TUPLE = ')',
    OP_EMPTY_DICT = '}', OP_TUPLE1 = 0x85, OP_TUPLE2 = 0x86, OP_TUPLE3 = 0x87,
    OP_NEWTRUE = 0x88, OP_NEWFALSE = 0x89, OP_BINFLOAT = 'G',
    OP_BINPERSID = 'Q', OP_REDUCE = 'R',
};

/* attribute names, interned once at import */
static PyObject *s_op_offset, *s_stack, *s_reduce;

static uint32_t
u4(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16)
           | ((uint32_t)p[3] << 24);
}

static int
arg_size(PyObject *o, Py_ssize_t *out)
{
    /* an offset or budget: past Py_ssize_t is "no bound", below 0 is 0 */
    int overflow = 0;
    if (!PyLong_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "run(): bounds and offsets are ints");
        return -1;
    }
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow > 0 || v > PY_SSIZE_T_MAX)
        *out = PY_SSIZE_T_MAX;
    else if (overflow < 0 || v < 0)
        *out = 0;
    else
        *out = (Py_ssize_t)v;
    return 0;
}

static int
arg_bound(PyObject *o, Py_ssize_t *out)
{
    /* a bound from Limits: past Py_ssize_t is "no bound". A negative bound
       refuses even an empty value (0 > -1), which the checks below, written
       for bounds >= 0, would let through: the caller runs Python instead */
    if (arg_size(o, out) < 0)
        return -1;
    if (*out == 0 && PyObject_RichCompareBool(o, Py_False, Py_LT) != 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "run(): negative bound");
        return -1;
    }
    return 0;
}

/* push a new reference; steals it */
static int
push(PyObject *stack, PyObject *value)
{
    if (value == NULL)
        return -1;
    int rc = PyList_Append(stack, value);
    Py_DECREF(value);
    return rc;
}

/* memo[index] = stack[-1]; 1 = done, 0 = leave it to Python, -1 = error */
static int
memo_put(PyObject *memo, PyObject *stack, size_t index, Py_ssize_t max_memo)
{
    Py_ssize_t n = PyList_GET_SIZE(stack);
    if (n == 0 || PyDict_GET_SIZE(memo) >= max_memo)
        return 0;
    PyObject *key = PyLong_FromSize_t(index);
    if (key == NULL)
        return -1;
    int rc = PyDict_SetItem(memo, key, PyList_GET_ITEM(stack, n - 1));
    Py_DECREF(key);
    return rc < 0 ? -1 : 1;
}

/* push memo[index]; 1 = done, 0 = never stored (Python raises), -1 = error */
static int
memo_get(PyObject *memo, PyObject *stack, size_t index)
{
    PyObject *key = PyLong_FromSize_t(index);
    if (key == NULL)
        return -1;
    PyObject *value = PyDict_GetItemWithError(memo, key);  /* borrowed */
    Py_DECREF(key);
    if (value == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return PyList_Append(stack, value) < 0 ? -1 : 1;
}

/* a dict SETITEM(S) may fill here: an exact dict or OrderedDict (a state
   dict), whose item assignment is builtin */
#define IS_MAPPING(o) (PyDict_CheckExact(o) || PyODict_CheckExact(o))

static int
set_item(PyObject *target, PyObject *key, PyObject *value)
{
    /* key and value held: the replaced value's __del__ may run in the middle
       (OrderedDict still uses the key after the dict's part is done) */
    Py_INCREF(key);
    Py_INCREF(value);
    int rc = PyDict_CheckExact(target) ? PyDict_SetItem(target, key, value)
                                       : PyObject_SetItem(target, key, value);
    Py_DECREF(key);
    Py_DECREF(value);
    return rc;
}

/* stack[-1] = value, as the handler's `stack[-1] = ...` does (an empty
   stack is its IndexError); steals value */
static int
set_top(PyObject *stack, PyObject *value)
{
    Py_ssize_t n = PyList_GET_SIZE(stack);
    if (n == 0) {
        Py_DECREF(value);
        PyErr_SetString(PyExc_IndexError, "list assignment index out of range");
        return -1;
    }
    return PyList_SetItem(stack, n - 1, value);  /* the old top may run __del__ */
}

/* The Python VM's self.stack is, at every moment, the stack its opcodes
   work on, and Python code run in the middle of an opcode (the __del__ of a
   value it drops) may use it. So whenever this loop switches stacks (MARK,
   and the MARK popped by TUPLE / SETITEMS / APPENDS), vm.stack follows: a
   __del__ sees the stack the Python handler would have left it. (No vm: the
   tests' bare calls.) */
static int
show(PyObject *vm, PyObject *stack)
{
    return vm == Py_None ? 0 : PyObject_SetAttr(vm, s_stack, stack);
}

/* Before a call into a Python handler: the VM's state as its dispatch leaves
   it for the handler (vm.op_offset = the opcode's offset; vm.stack = the
   stack this loop works on, which a MARK may have replaced since the call) */
static int
expose(PyObject *vm, PyObject *stack, Py_ssize_t pos)
{
    PyObject *at = PyLong_FromSsize_t(pos);
    if (at == NULL)
        return -1;
    int rc = PyObject_SetAttr(vm, s_op_offset, at);
    Py_DECREF(at);
    return rc < 0 ? -1 : show(vm, stack);
}

/* After it: the Python loop takes vm.stack afresh for the next opcode. If the
   handler replaced it (none does), so does this loop: *stack becomes that
   one and 0 says "stop after this opcode" (it may not even be a list);
   1 = go on, -1 = error */
static int
adopt(PyObject *vm, PyObject **stack)
{
    PyObject *now = PyObject_GetAttr(vm, s_stack);
    if (now == NULL)
        return -1;
    if (now == *stack) {
        Py_DECREF(now);
        return 1;
    }
    Py_SETREF(*stack, now);
    return 0;
}

/* a str from UTF-8 (surrogatepass, as pickle writes); NULL with no error set
   means: invalid, leave it to Python */
static PyObject *
utf8(const unsigned char *p, Py_ssize_t n)
{
    PyObject *s = PyUnicode_DecodeUTF8((const char *)p, n, "surrogatepass");
    if (s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
        PyErr_Clear();
    return s;
}

/* the exception being raised, taken out of the thread state (a new reference),
   or NULL when that fails too */
static PyObject *
take_error(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    PyErr_Clear();
    return value;
#endif
}

/* run(data, pos, stack, metastack, memo, budget,
 *     max_memo, max_nesting, max_items, max_bytes,
 *     vm, persistent_load, handler_type) -> (pos, ops, stack, error)
 *
 * Runs at most `budget` opcodes from `pos`. Returns the offset of the first
 * opcode not run, the number run, the current stack (a MARK or TUPLE
 * replaces it, as the Python VM's self.stack) and None. If an opcode fails
 * while it runs (an allocation: MemoryError, or whatever a handler it called
 * raised), error is that exception and pos that opcode's offset, so the
 * caller raises it located there, as its own handler would have; the opcode
 * may be half done (the run is over). Only if even this tuple cannot be made
 * does run() raise.
 *
 * Two opcodes are run by calling the Python VM's own handler code, which
 * decides everything about them; only the dispatch to it is saved:
 * BINPERSID calls persistent_load(stack[-1]) (None: left to Python), and
 * REDUCE on a `handler_type` object (an allowlist entry; None: left to
 * Python) with a tuple of arguments calls its .reduce(vm, args), which is
 * what the policy's call does for one (the caller passes handler_type only
 * for a policy whose call is exactly that). Before each, vm.op_offset and
 * vm.stack are set as the Python dispatch leaves them.
 */
static PyObject *
run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 13) {
        PyErr_SetString(PyExc_TypeError, "run() takes 13 arguments");
        return NULL;
    }
    PyObject *data = args[0], *metastack = args[3], *memo = args[4];
    PyObject *vm = args[10], *persist = args[11], *handler_type = args[12];
    if (!PyBytes_CheckExact(data) || !PyList_CheckExact(args[2])
        || !PyList_CheckExact(metastack) || !PyDict_CheckExact(memo)
        || (persist != Py_None && !PyCallable_Check(persist))
        || (handler_type != Py_None && !PyType_Check(handler_type))) {
        PyErr_SetString(PyExc_TypeError,
                        "run(bytes, int, list, list, dict, int, int, int, int, int, "
                        "vm, callable or None, type or None)");
        return NULL;
    }
    Py_ssize_t pos, budget, max_memo, max_nesting, max_items, max_bytes;
    if (PyLong_Check(args[1]) && PyObject_RichCompareBool(args[1], Py_False, Py_LT) == 1) {
        PyErr_SetString(PyExc_ValueError, "run(): negative offset");
        return NULL;
    }
    if (arg_size(args[1], &pos) < 0 || arg_size(args[5], &budget) < 0
        || arg_bound(args[6], &max_memo) < 0 || arg_bound(args[7], &max_nesting) < 0
        || arg_bound(args[8], &max_items) < 0 || arg_bound(args[9], &max_bytes) < 0)
        return NULL;

    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(data);
    const Py_ssize_t len = PyBytes_GET_SIZE(data);
    PyObject *stack = args[2];
    Py_INCREF(stack);
    Py_ssize_t ops = 0;
    PyObject *failed = NULL;  /* the exception an opcode raised while it ran */
    int rc;

/* the opcode's argument is n bytes at p: or leave the opcode to Python */
/* compared as size_t: a 4-byte length never wraps negative (32-bit builds) */
#define need(n) do { if ((size_t)(n) > (size_t)(len - p)) goto done; } while (0)
#define CHECK(expr) do { rc = (expr); if (rc < 0) goto error; if (rc == 0) goto done; } while (0)

    while (ops < budget && pos < len) {
        Py_ssize_t p = pos + 1;  /* the argument's offset */
        Py_ssize_t n = PyList_GET_SIZE(stack);
        switch (buf[pos]) {
        case OP_BININT1:
            need(1);
            if (push(stack, PyLong_FromLong(buf[p])) < 0)
                goto error;
            p += 1;
            break;
        case OP_BININT2:
            need(2);
            if (push(stack, PyLong_FromLong(buf[p] | (buf[p + 1] << 8))) < 0)
                goto error;
            p += 2;
            break;
        case OP_BININT:
            need(4);
            if (push(stack, PyLong_FromLong((long)(int32_t)u4(buf + p))) < 0)
                goto error;
            p += 4;
            break;
        case OP_BINFLOAT: {
            need(8);
            double x = Unpack8(buf + p);
            if (x == -1.0 && PyErr_Occurred())
                goto error;
            if (push(stack, PyFloat_FromDouble(x)) < 0)
                goto error;
            p += 8;
            break;
        }
        case OP_NONE:
        case OP_NEWTRUE:
        case OP_NEWFALSE: {
            PyObject *constant = buf[pos] == OP_NONE ? Py_None
                                 : buf[pos] == OP_NEWTRUE ? Py_True : Py_False;
            if (PyList_Append(stack, constant) < 0)
                goto error;
            break;
        }
        case OP_SHORT_BINUNICODE:
        case OP_BINUNICODE: {
            size_t size;
            if (buf[pos] == OP_SHORT_BINUNICODE) {
                need(1);
                size = buf[p];
                p += 1;
            } else {
                need(4);
                size = u4(buf + p);
                p += 4;
            }
            need(size);
            /* code points <= bytes: a string within the bound in bytes is
               within it; a longer one goes to Python, which counts */
            if (size > (size_t)max_bytes)
                goto done;
            PyObject *s = utf8(buf + p, (Py_ssize_t)size);
            if (s == NULL) {
                if (PyErr_Occurred())
                    goto error;
                goto done;
            }
            if (push(stack, s) < 0)
                goto error;
            p += size;
            break;
        }
        case OP_EMPTY_TUPLE:
        case OP_EMPTY_LIST:
        case OP_EMPTY_DICT: {
            PyObject *empty = buf[pos] == OP_EMPTY_TUPLE ? PyTuple_New(0)
                              : buf[pos] == OP_EMPTY_LIST ? PyList_New(0) : PyDict_New();
            if (push(stack, empty) < 0)
                goto error;
            break;
        }
        case OP_TUPLE1:
        case OP_TUPLE2:
        case OP_TUPLE3: {
            Py_ssize_t k = buf[pos] - OP_TUPLE1 + 1;
            if (n < k)
                goto done;
            PyObject *t = PyList_GetSlice(stack, n - k, n);
            if (t == NULL)
                goto error;
            PyObject *tuple = PyList_AsTuple(t);
            Py_DECREF(t);
            if (tuple == NULL)
                goto error;
            if (PyList_SetSlice(stack, n - k, n, NULL) < 0) {
                Py_DECREF(tuple);
                goto error;
            }
            if (push(stack, tuple) < 0)
                goto error;
            break;
        }
        case OP_MARK: {
            /* Python: append, then refuse more than max_nesting open MARKs */
            if (PyList_GET_SIZE(metastack) >= max_nesting)
                goto done;
            PyObject *fresh = PyList_New(0);
            if (fresh == NULL)
                goto error;
            if (PyList_Append(metastack, stack) < 0) {
                Py_DECREF(fresh);
                goto error;
            }
            Py_DECREF(stack);  /* metastack holds it now */
            stack = fresh;
            if (show(vm, stack) < 0)
                goto error;
            break;
        }
        case OP_TUPLE:
        case OP_SETITEMS:
        case OP_APPENDS: {
            /* pop the MARK: the items are the current stack */
            Py_ssize_t depth = PyList_GET_SIZE(metastack);
            if (depth == 0 || n > max_items)
                goto done;
            PyObject *below = PyList_GET_ITEM(metastack, depth - 1);
            if (!PyList_CheckExact(below))  /* only stacks are pushed there */
                goto done;
            Py_ssize_t m = PyList_GET_SIZE(below);
            PyObject *target = NULL;
            if (buf[pos] == OP_SETITEMS) {
                if (n % 2 || m == 0 || !IS_MAPPING(PyList_GET_ITEM(below, m - 1)))
                    goto done;
                for (Py_ssize_t i = 0; i < n; i += 2)
                    if (!PyUnicode_CheckExact(PyList_GET_ITEM(stack, i)))
                        goto done;
                target = PyList_GET_ITEM(below, m - 1);
            } else if (buf[pos] == OP_APPENDS) {
                if (m == 0 || !PyList_CheckExact(PyList_GET_ITEM(below, m - 1)))
                    goto done;
                target = PyList_GET_ITEM(below, m - 1);
            }
            /* sure to succeed: pop the MARK first, as _pop_mark does, so that
               a failure below leaves the Python handler's state. From here
               on, Python code may run (the __del__ of a dict value SETITEMS
               replaces, or of an items' value dropped at the end): every
               object used is held by a reference of this function's own */
            Py_INCREF(below);
            if (PyList_SetSlice(metastack, depth - 1, depth, NULL) < 0) {
                Py_DECREF(below);
                goto error;
            }
            PyObject *items = stack;
            stack = below;
            Py_XINCREF(target);
            rc = show(vm, stack);  /* as _pop_mark leaves it, before any __del__ */
            if (rc < 0) {
                /* the MARK is popped: the opcode is half done */
            } else if (buf[pos] == OP_SETITEMS) {
                /* the size and key types again at each pair: a __del__ run by
                   the previous pair may have changed the items */
                for (Py_ssize_t i = 0; i + 1 < PyList_GET_SIZE(items); i += 2) {
                    PyObject *key = PyList_GET_ITEM(items, i);
                    if (!PyUnicode_CheckExact(key)) {
                        PyErr_SetString(PyExc_RuntimeError,
                                        "SETITEMS: its items changed while it ran");
                        rc = -1;
                        break;
                    }
                    if (set_item(target, key, PyList_GET_ITEM(items, i + 1)) < 0) {
                        rc = -1;
                        break;
                    }
                }
            } else if (buf[pos] == OP_APPENDS) {
                rc = PyList_SetSlice(target, PyList_GET_SIZE(target),
                                     PyList_GET_SIZE(target), items);
            } else {
                rc = push(stack, PyList_AsTuple(items));
            }
            Py_XDECREF(target);
            Py_DECREF(items);
            if (rc < 0)
                goto error;
            break;
        }
        case OP_SETITEM: {
            if (n < 3)
                goto done;
            PyObject *target = PyList_GET_ITEM(stack, n - 3);
            PyObject *key = PyList_GET_ITEM(stack, n - 2);
            if (!IS_MAPPING(target) || !PyUnicode_CheckExact(key))
                goto done;
            /* as the handler: pop value and key, then insert, so that the
               replaced value's __del__ sees the stack it would see there.
               All three held across the pop and the insert */
            PyObject *value = PyList_GET_ITEM(stack, n - 1);
            Py_INCREF(target);
            Py_INCREF(key);
            Py_INCREF(value);
            rc = PyList_SetSlice(stack, n - 2, n, NULL);
            if (rc == 0)
                rc = set_item(target, key, value);
            Py_DECREF(target);
            Py_DECREF(key);
            Py_DECREF(value);
            if (rc < 0)
                goto error;
            break;
        }
        case OP_APPEND: {
            if (n < 2)
                goto done;
            PyObject *target = PyList_GET_ITEM(stack, n - 2);
            if (!PyList_CheckExact(target))
                goto done;
            if (PyList_Append(target, PyList_GET_ITEM(stack, n - 1)) < 0)
                goto error;
            if (PyList_SetSlice(stack, n - 1, n, NULL) < 0)
                goto error;
            break;
        }
        case OP_BINGET:
            need(1);
            CHECK(memo_get(memo, stack, buf[p]));
            p += 1;
            break;
        case OP_LONG_BINGET:
            need(4);
            CHECK(memo_get(memo, stack, u4(buf + p)));
            p += 4;
            break;
        case OP_BINPUT:
            need(1);
            CHECK(memo_put(memo, stack, buf[p], max_memo));
            p += 1;
            break;
        case OP_LONG_BINPUT:
            need(4);
            CHECK(memo_put(memo, stack, u4(buf + p), max_memo));
            p += 4;
            break;
        case OP_MEMOIZE:
            CHECK(memo_put(memo, stack, (size_t)PyDict_GET_SIZE(memo), max_memo));
            break;
        case OP_BINPERSID: {
            /* its handler: stack[-1] = persistent_load(stack[-1]) */
            if (persist == Py_None || n < 1)
                goto done;
            PyObject *pid = PyList_GET_ITEM(stack, n - 1);
            PyObject *value = NULL;
            Py_INCREF(pid);
            if (expose(vm, stack, pos) == 0)
                value = PyObject_CallOneArg(persist, pid);
            Py_DECREF(pid);
            if (value == NULL || set_top(stack, value) < 0)
                goto error;
            goto called;
        }
        case OP_REDUCE: {
            /* its handler pops the arguments, then stack[-1] = the policy's
               call, which for an allowlist entry is entry.reduce(vm, args).
               Anything else -- arguments not a tuple, a trusted callable, a
               record, a refusal, an entry that may not be called, a policy
               that wraps its call -- goes to Python */
            if (handler_type == Py_None || n < 2)
                goto done;
            PyObject *fargs = PyList_GET_ITEM(stack, n - 1);
            PyObject *func = PyList_GET_ITEM(stack, n - 2);
            if (!PyTuple_CheckExact(fargs) || (PyObject *)Py_TYPE(func) != handler_type)
                goto done;
            PyObject *reduce = PyObject_GetAttr(func, s_reduce);
            if (reduce == NULL)
                goto error;
            if (reduce == Py_None) {
                Py_DECREF(reduce);
                goto done;
            }
            PyObject *value = NULL;
            Py_INCREF(fargs);
            if (PyList_SetSlice(stack, n - 1, n, NULL) == 0
                && expose(vm, stack, pos) == 0) {
                PyObject *call_args[2] = {vm, fargs};
                value = PyObject_Vectorcall(reduce, call_args, 2, NULL);
            }
            Py_DECREF(fargs);
            Py_DECREF(reduce);
            if (value == NULL || set_top(stack, value) < 0)
                goto error;
            goto called;
        }
        default:
            goto done;
        }
        pos = p;
        ops++;
        continue;
called:
        /* after a handler, the Python loop reads vm.stack afresh: so does this */
        rc = adopt(vm, &stack);
        if (rc < 0)
            goto error;
        pos = p;
        ops++;
        if (rc == 0)
            goto done;
    }
done:
    {
        PyObject *result = PyTuple_New(4);
        PyObject *at = PyLong_FromSsize_t(pos), *count = PyLong_FromSsize_t(ops);
        if (result == NULL || at == NULL || count == NULL) {
            Py_XDECREF(result);
            Py_XDECREF(at);
            Py_XDECREF(count);
            Py_DECREF(stack);
            if (failed != NULL) {  /* raise the opcode's own error */
                PyErr_Clear();
#if PY_VERSION_HEX >= 0x030C0000
                PyErr_SetRaisedException(failed);
#else
                PyErr_SetObject((PyObject *)Py_TYPE(failed), failed);
                Py_DECREF(failed);
#endif
            }
            return NULL;
        }
        if (failed == NULL) {
            failed = Py_None;
            Py_INCREF(failed);
        }
        PyTuple_SET_ITEM(result, 0, at);
        PyTuple_SET_ITEM(result, 1, count);
        PyTuple_SET_ITEM(result, 2, stack);  /* steals */
        PyTuple_SET_ITEM(result, 3, failed);  /* steals */
        return result;
    }
error:
    /* the opcode at pos failed part way: hand its exception back with pos */
    failed = take_error();
    if (failed == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_SystemError, "_vmfast.run: an error vanished");
        Py_DECREF(stack);
        return NULL;
    }
    goto done;
#undef need
#undef CHECK
}

static PyMethodDef methods[] = {
    {"run", (PyCFunction)(void (*)(void))run, METH_FASTCALL,
     "Run the pickle's hot pure-data opcodes; stop at anything else."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_vmfast",
    "The restricted VM's hot opcodes, compiled (see unpickler.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__vmfast(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (s_op_offset == NULL) {
        s_op_offset = PyUnicode_InternFromString("op_offset");
        s_stack = PyUnicode_InternFromString("stack");
        s_reduce = PyUnicode_InternFromString("reduce");
        if (s_op_offset == NULL || s_stack == NULL || s_reduce == NULL) {
            Py_DECREF(m);
            return NULL;
        }
    }
    /* what run() takes and returns: 3 = 13 arguments, (pos, ops, stack,
       error). unpickler.py uses only the version it was written for, so a
       stale build of an older file (an editable install not rebuilt) leaves
       the Python loop alone */
    if (PyModule_AddIntConstant(m, "API", 3) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
