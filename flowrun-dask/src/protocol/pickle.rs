//! Just enough of Python's pickle format, over one object type, [`PyObject`].
//!
//! * [`dumps`] writes a [`PyObject`] in protocol 4, with the opcodes CPython
//!   uses for each kind of object; the bytes differ only in framing and
//!   batching (no FRAME, memo entries only for cycles, ints beyond i32 in
//!   eight bytes, one APPENDS or SETITEMS for any number of items). The
//!   scheduler must unpickle the task graph and annotations: builtins,
//!   globals, `REDUCE` and `NEWOBJ_EX`. No crate writes `GLOBAL`/`REDUCE`.
//! * [`loads`] evaluates a pickle *symbolically* into a [`PyObject`]:
//!   globals, calls and object construction become nodes instead of Python
//!   objects. That is enough to read the exception a worker sends back for a
//!   failed task, without Python.
//!
//! What one writes the other reads back as the same value (a property test
//! below checks it), so both share the type instead of each having its own.
//!
//! The reader keeps containers in an arena and refers to them by index,
//! because pickles share objects through the memo (an exception's `cmd` list
//! is both in its `args` and in its `__dict__`, and is memoised while still
//! empty); copying at memoise time would lose the items added later.

use std::collections::HashMap;

/// A Python object, as [`dumps`] writes it and [`loads`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PyObject {
    None,
    Bool(bool),
    Int(i64),
    /// An int beyond i64, as its shortest little-endian two's-complement
    /// bytes (what [`loads`] returns; [`dumps`] writes the bytes as given).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<PyObject>),
    List(Vec<PyObject>),
    /// Entries in order; Python dicts keep insertion order.
    Dict(Vec<(PyObject, PyObject)>),
    Set(Vec<PyObject>),
    FrozenSet(Vec<PyObject>),
    /// `module.qualname`, resolved by import on the unpickling side.
    Global {
        module: String,
        name: String,
    },
    /// `func(*args)` (REDUCE, whose arguments Python requires to be a tuple).
    Call {
        func: Box<PyObject>,
        args: Vec<PyObject>,
    },
    /// `cls.__new__(cls, *args, **kwargs)`: NEWOBJ without keyword
    /// arguments, NEWOBJ_EX with them.
    New {
        cls: Box<PyObject>,
        args: Vec<PyObject>,
        kwargs: Vec<(PyObject, PyObject)>,
    },
    /// `obj.__setstate__(state)` or a `__dict__` update (BUILD).
    Build {
        obj: Box<PyObject>,
        state: Box<PyObject>,
    },
    /// A reference back to an object that contains it: where [`loads`] cut
    /// a cycle. Which of the enclosing objects it was is not kept; [`dumps`]
    /// writes it as a reference to the nearest enclosing list, dict, set or
    /// built object (a `Build`'s state itself does not count, since BUILD
    /// only copies it into the object: `Build { obj, state: {"me":
    /// Recursive} }` is `obj.me = obj`). It is written as None where it has
    /// none of these around it, or is a `Build`'s object (BUILD would change
    /// the object referred to); [`loads`] never returns either, since a
    /// cycle passes through an object changed after it was made, and BUILD
    /// changes the object every reference sees.
    Recursive,
}

impl PyObject {
    /// A global such as `subprocess.check_output`.
    pub(crate) fn global(module: &str, name: &str) -> Self {
        PyObject::Global {
            module: module.to_string(),
            name: name.to_string(),
        }
    }

    /// A call of `func` with positional arguments.
    pub(crate) fn call(func: PyObject, args: Vec<PyObject>) -> Self {
        PyObject::Call {
            func: Box::new(func),
            args,
        }
    }

    /// A str.
    pub(crate) fn str(s: &str) -> Self {
        PyObject::Str(s.to_string())
    }
}

/// Declares each opcode as a `u8` constant of the module `op`.
macro_rules! opcodes {
    ($($name:ident = $byte:expr),* $(,)?) => {
        mod op {
            $(pub(super) const $name: u8 = $byte;)*
        }
    };
}

opcodes! {
    // Framing and the stack.
    PROTO = 0x80, FRAME = 0x95, STOP = b'.', MARK = b'(', POP = b'0', POP_MARK = b'1', DUP = b'2',
    // Scalars.
    NONE = b'N', NEWTRUE = 0x88, NEWFALSE = 0x89, BINFLOAT = b'G',
    BININT = b'J', BININT1 = b'K', BININT2 = b'M', LONG1 = 0x8a, LONG4 = 0x8b,
    // Text and bytes, by the width of their length.
    SHORT_BINUNICODE = 0x8c, BINUNICODE = b'X', BINUNICODE8 = 0x8d,
    SHORT_BINBYTES = b'C', BINBYTES = b'B', BINBYTES8 = 0x8e, BYTEARRAY8 = 0x96,
    SHORT_BINSTRING = b'U', BINSTRING = b'T',
    // Containers.
    EMPTY_TUPLE = b')', TUPLE1 = 0x85, TUPLE2 = 0x86, TUPLE3 = 0x87, TUPLE = b't',
    EMPTY_LIST = b']', LIST = b'l', APPEND = b'a', APPENDS = b'e',
    EMPTY_DICT = b'}', DICT = b'd', SETITEM = b's', SETITEMS = b'u',
    EMPTY_SET = 0x8f, ADDITEMS = 0x90, FROZENSET = 0x91,
    // Objects.
    GLOBAL = b'c', STACK_GLOBAL = 0x93, REDUCE = b'R', NEWOBJ = 0x81, NEWOBJ_EX = 0x92, BUILD = b'b',
    // The memo.
    MEMOIZE = 0x94, BINPUT = b'q', LONG_BINPUT = b'r', BINGET = b'h', LONG_BINGET = b'j',
}

/// Serialises `value` as a protocol-4 pickle.
pub(crate) fn dumps(value: &PyObject) -> Vec<u8> {
    let mut writer = Writer {
        out: vec![op::PROTO, 4],
        memoised: 0,
        anchors: Vec::new(),
    };
    writer.value(value);
    writer.out.push(op::STOP);
    writer.out
}

struct Writer {
    out: Vec<u8>,
    /// Memo entries so far; MEMOIZE numbers them in order. Only objects
    /// with a cycle through them are memoised, and 2^32 of those do not fit
    /// in memory.
    memoised: u32,
    /// The memo index of each enclosing object a [`PyObject::Recursive`]
    /// refers to, innermost last.
    anchors: Vec<u32>,
}

impl Writer {
    fn value(&mut self, value: &PyObject) {
        self.object(value, true);
    }

    /// Writes `value`; if it is a list, dict or set, only `may_anchor` lets
    /// the `Recursive`s in it refer to it.
    fn object(&mut self, value: &PyObject, may_anchor: bool) {
        match value {
            PyObject::None => self.out.push(op::NONE),
            PyObject::Bool(b) => self.out.push(if *b { op::NEWTRUE } else { op::NEWFALSE }),
            PyObject::Int(n) => self.int(*n),
            PyObject::BigInt(bytes) => {
                // Python cannot write an int of 4 GiB either (LONG4's length
                // is 32 bits); such an int is cut to what LONG4 can say.
                let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                match u8::try_from(len) {
                    Ok(short) => self.out.extend([op::LONG1, short]),
                    Err(_) => {
                        self.out.push(op::LONG4);
                        self.out.extend(len.to_le_bytes());
                    }
                }
                self.out.extend_from_slice(&bytes[..len as usize]);
            }
            PyObject::Float(f) => {
                // The only big-endian number in the format.
                self.out.push(op::BINFLOAT);
                self.out.extend(f.to_be_bytes());
            }
            PyObject::Str(s) => self.str(s),
            PyObject::Bytes(b) => self.sized(b, op::SHORT_BINBYTES, op::BINBYTES, op::BINBYTES8),
            PyObject::Tuple(items) => self.tuple(items),
            PyObject::List(items) => {
                self.out.push(op::EMPTY_LIST);
                let anchor = may_anchor && items.iter().any(refers_out);
                self.within(anchor, |w| w.marked(items, op::APPENDS));
            }
            PyObject::Dict(entries) => self.dict(entries, may_anchor),
            PyObject::Set(items) => {
                self.out.push(op::EMPTY_SET);
                let anchor = may_anchor && items.iter().any(refers_out);
                self.within(anchor, |w| w.marked(items, op::ADDITEMS));
            }
            PyObject::FrozenSet(items) => {
                self.out.push(op::MARK);
                items.iter().for_each(|item| self.value(item));
                self.out.push(op::FROZENSET);
            }
            PyObject::Global { module, name } => {
                // STACK_GLOBAL (protocol 4) also takes dotted names such as
                // `bytes.join`, which the text GLOBAL opcode cannot.
                self.str(module);
                self.str(name);
                self.out.push(op::STACK_GLOBAL);
            }
            PyObject::Call { func, args } => {
                self.value(func);
                self.tuple(args);
                self.out.push(op::REDUCE);
            }
            PyObject::New { cls, args, kwargs } => {
                self.value(cls);
                self.tuple(args);
                if kwargs.is_empty() {
                    self.out.push(op::NEWOBJ);
                } else {
                    self.dict(kwargs, true);
                    self.out.push(op::NEWOBJ_EX);
                }
            }
            PyObject::Build { obj, state } => {
                match **obj {
                    PyObject::Recursive => self.out.push(op::NONE),
                    _ => self.value(obj),
                }
                self.within(state_refers_out(state), |w| w.object(state, false));
                self.out.push(op::BUILD);
            }
            PyObject::Recursive => match self.anchors.last() {
                Some(&index) => match u8::try_from(index) {
                    Ok(short) => self.out.extend([op::BINGET, short]),
                    Err(_) => {
                        self.out.push(op::LONG_BINGET);
                        self.out.extend(index.to_le_bytes());
                    }
                },
                None => self.out.push(op::NONE),
            },
        }
    }

    fn int(&mut self, n: i64) {
        if let Ok(small) = u8::try_from(n) {
            self.out.extend([op::BININT1, small]);
        } else if let Ok(mid) = u16::try_from(n) {
            self.out.push(op::BININT2);
            self.out.extend(mid.to_le_bytes());
        } else if let Ok(int) = i32::try_from(n) {
            self.out.push(op::BININT);
            self.out.extend(int.to_le_bytes());
        } else {
            self.out.extend([op::LONG1, 8]);
            self.out.extend(n.to_le_bytes());
        }
    }

    fn str(&mut self, s: &str) {
        let (short, long, huge) = (op::SHORT_BINUNICODE, op::BINUNICODE, op::BINUNICODE8);
        self.sized(s.as_bytes(), short, long, huge);
    }

    fn sized(&mut self, data: &[u8], short: u8, long: u8, huge: u8) {
        if let Ok(len) = u8::try_from(data.len()) {
            self.out.extend([short, len]);
        } else if let Ok(len) = u32::try_from(data.len()) {
            self.out.push(long);
            self.out.extend(len.to_le_bytes());
        } else {
            self.out.push(huge);
            self.out.extend((data.len() as u64).to_le_bytes());
        }
        self.out.extend_from_slice(data);
    }

    fn tuple(&mut self, items: &[PyObject]) {
        match items.len() {
            0 => self.out.push(op::EMPTY_TUPLE),
            1..=3 => {
                items.iter().for_each(|item| self.value(item));
                self.out
                    .push([op::TUPLE1, op::TUPLE2, op::TUPLE3][items.len() - 1]);
            }
            _ => {
                self.out.push(op::MARK);
                items.iter().for_each(|item| self.value(item));
                self.out.push(op::TUPLE);
            }
        }
    }

    fn dict(&mut self, entries: &[(PyObject, PyObject)], may_anchor: bool) {
        self.out.push(op::EMPTY_DICT);
        let anchor = may_anchor && entries.iter().any(|(k, v)| refers_out(k) || refers_out(v));
        self.within(anchor, |w| {
            if !entries.is_empty() {
                w.out.push(op::MARK);
                for (k, v) in entries {
                    w.value(k);
                    w.value(v);
                }
                w.out.push(op::SETITEMS);
            }
        });
    }

    /// Adds `items` to the list or set on the stack with `opcode`.
    fn marked(&mut self, items: &[PyObject], opcode: u8) {
        if !items.is_empty() {
            self.out.push(op::MARK);
            items.iter().for_each(|item| self.value(item));
            self.out.push(opcode);
        }
    }

    /// Writes the rest of the object on the stack with `write`; if `anchor`,
    /// memoises it first, as what the `Recursive`s written meanwhile refer to.
    fn within(&mut self, anchor: bool, write: impl FnOnce(&mut Self)) {
        if !anchor {
            return write(self);
        }
        self.out.push(op::MEMOIZE);
        self.anchors.push(self.memoised);
        self.memoised = self.memoised.saturating_add(1);
        write(self);
        self.anchors.pop();
    }
}

/// Whether `value` holds a [`PyObject::Recursive`] that refers to an object
/// around `value`: one that no list, dict or set in it, nor the state of a
/// `Build` in it, encloses.
fn refers_out(value: &PyObject) -> bool {
    match value {
        PyObject::Recursive => true,
        PyObject::Tuple(items) | PyObject::FrozenSet(items) => items.iter().any(refers_out),
        PyObject::Call { func, args } => refers_out(func) || args.iter().any(refers_out),
        PyObject::New { cls, args, kwargs } => {
            refers_out(cls)
                || args.iter().any(refers_out)
                || kwargs.iter().any(|(k, v)| refers_out(k) || refers_out(v))
        }
        PyObject::Build { obj, .. } => !matches!(**obj, PyObject::Recursive) && refers_out(obj),
        _ => false,
    }
}

/// Whether a `Build`'s `state` holds a [`PyObject::Recursive`] that refers
/// to the built object: as [`refers_out`], except that a list, dict or set
/// that is the state itself does not take the references.
fn state_refers_out(state: &PyObject) -> bool {
    match state {
        PyObject::List(items) | PyObject::Set(items) => items.iter().any(refers_out),
        PyObject::Dict(entries) => entries.iter().any(|(k, v)| refers_out(k) || refers_out(v)),
        other => refers_out(other),
    }
}

/// Why a pickle could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot read pickle at byte {offset}: {reason}")]
pub(crate) struct PickleError {
    offset: usize,
    reason: String,
}

/// Limits that keep a hostile or broken pickle from exhausting the stack or
/// memory while it is turned into a tree.
const MAX_DEPTH: usize = 200;
const MAX_NODES: usize = 1_000_000;

type Id = usize;

#[derive(Debug, Clone)]
enum Node {
    Leaf(PyObject),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    FrozenSet(Vec<Id>),
    Call(Id, Id),
    New(Id, Id, Option<Id>),
    Build(Id, Id),
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
}

impl<'a> Machine<'a> {
    fn fail(&self, reason: impl Into<String>) -> PickleError {
        PickleError {
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let data = self.data;
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= data.len())
            .ok_or_else(|| self.fail(format!("truncated: {n} more bytes expected")))?;
        let bytes = &data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let bytes = self.take(N)?;
        let mut array = [0u8; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take_array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.take_array()?))
    }

    fn usize_from(&self, n: u64) -> Result<usize, PickleError> {
        usize::try_from(n).map_err(|_| self.fail("length out of range"))
    }

    /// Reads the length or index after `opcode`, whose short form carries it
    /// in one byte, long form in four and any other form in eight.
    fn operand(&mut self, opcode: u8, short: u8, long: u8) -> Result<u64, PickleError> {
        if opcode == short {
            Ok(self.u8()?.into())
        } else if opcode == long {
            Ok(self.u32()?.into())
        } else {
            self.u64()
        }
    }

    /// Reads a length operand (see [`Machine::operand`]) and that many bytes.
    fn sized(&mut self, opcode: u8, short: u8, long: u8) -> Result<&'a [u8], PickleError> {
        let len = self.operand(opcode, short, long)?;
        let len = self.usize_from(len)?;
        self.take(len)
    }

    /// Reads a line for the text-mode GLOBAL opcode.
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.fail("unterminated line"))?;
        let text = String::from_utf8_lossy(&rest[..len]).into_owned();
        self.pos += len + 1;
        Ok(text)
    }

    fn push_node(&mut self, node: Node) {
        self.nodes.push(node);
        self.stack.push(self.nodes.len() - 1);
    }

    fn push(&mut self, object: PyObject) {
        self.push_node(Node::Leaf(object));
    }

    fn pop(&mut self) -> Result<Id, PickleError> {
        // Items above a mark belong to the pending MARK group; popping below
        // it would corrupt the group, so treat it as a malformed pickle.
        if self.marks.last().is_some_and(|&m| self.stack.len() <= m) {
            return Err(self.fail("stack underflow at a mark"));
        }
        self.stack.pop().ok_or_else(|| self.fail("stack underflow"))
    }

    fn top(&self) -> Result<Id, PickleError> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.fail("empty stack"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>, PickleError> {
        let mark = self.marks.pop().ok_or_else(|| self.fail("no mark"))?;
        if mark > self.stack.len() {
            return Err(self.fail("mark above the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn pairs(&self, items: Vec<Id>) -> Result<Vec<(Id, Id)>, PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.fail("odd number of dict items"));
        }
        Ok(items.chunks(2).map(|p| (p[0], p[1])).collect())
    }

    fn text(&self, bytes: &[u8]) -> PyObject {
        // Python writes lone surrogates with "surrogatepass"; keep such text
        // readable instead of failing the whole pickle.
        PyObject::Str(String::from_utf8_lossy(bytes).into_owned())
    }

    fn extend_list(&mut self, target: Id, items: Vec<Id>) -> Result<(), PickleError> {
        match self.nodes.get_mut(target) {
            Some(Node::List(list)) => {
                list.extend(items);
                Ok(())
            }
            _ => Err(self.fail("APPEND to something that is not a list")),
        }
    }

    fn extend_dict(&mut self, target: Id, items: Vec<(Id, Id)>) -> Result<(), PickleError> {
        match self.nodes.get_mut(target) {
            Some(Node::Dict(dict)) => {
                dict.extend(items);
                Ok(())
            }
            _ => Err(self.fail("SETITEM on something that is not a dict")),
        }
    }

    fn memo_get(&mut self, index: u64) -> Result<(), PickleError> {
        let id = *self
            .memo
            .get(&index)
            .ok_or_else(|| self.fail(format!("memo entry {index} missing")))?;
        self.stack.push(id);
        Ok(())
    }

    fn memo_put(&mut self, index: u64) -> Result<(), PickleError> {
        let top = self.top()?;
        self.memo.insert(index, top);
        Ok(())
    }

    fn run(&mut self) -> Result<Id, PickleError> {
        loop {
            let opcode = self.u8()?;
            match opcode {
                op::PROTO => {
                    self.u8()?;
                }
                // Framing only groups the opcodes for buffered reading.
                op::FRAME => {
                    self.u64()?;
                }
                op::STOP => return self.pop(),
                op::MARK => self.marks.push(self.stack.len()),
                op::POP => {
                    // Like Python, POP right after a MARK discards the mark.
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                op::POP_MARK => {
                    self.pop_mark()?;
                }
                op::DUP => {
                    let top = self.top()?;
                    self.stack.push(top);
                }
                op::NONE => self.push(PyObject::None),
                op::NEWTRUE => self.push(PyObject::Bool(true)),
                op::NEWFALSE => self.push(PyObject::Bool(false)),
                op::BININT1 => {
                    let n = self.u8()?;
                    self.push(PyObject::Int(n.into()));
                }
                op::BININT2 => {
                    let n = u16::from_le_bytes(self.take_array()?);
                    self.push(PyObject::Int(n.into()));
                }
                op::BININT => {
                    let n = i32::from_le_bytes(self.take_array()?);
                    self.push(PyObject::Int(n.into()));
                }
                op::LONG1 | op::LONG4 => {
                    let bytes = self.sized(opcode, op::LONG1, op::LONG4)?;
                    self.push(long_from_le(bytes));
                }
                op::BINFLOAT => {
                    let f = f64::from_be_bytes(self.take_array()?);
                    self.push(PyObject::Float(f));
                }
                op::SHORT_BINUNICODE | op::BINUNICODE | op::BINUNICODE8 => {
                    let bytes = self.sized(opcode, op::SHORT_BINUNICODE, op::BINUNICODE)?;
                    let text = self.text(bytes);
                    self.push(text);
                }
                op::SHORT_BINBYTES | op::BINBYTES | op::BINBYTES8 | op::BYTEARRAY8 => {
                    let bytes = self.sized(opcode, op::SHORT_BINBYTES, op::BINBYTES)?;
                    self.push(PyObject::Bytes(bytes.to_vec()));
                }
                // Python 2 strings; only seen from very old picklers.
                op::SHORT_BINSTRING | op::BINSTRING => {
                    let bytes = self.sized(opcode, op::SHORT_BINSTRING, op::BINSTRING)?;
                    self.push(PyObject::Bytes(bytes.to_vec()));
                }
                op::EMPTY_TUPLE => self.push_node(Node::Tuple(Vec::new())),
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = usize::from(opcode - op::TUPLE1 + 1);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push_node(Node::Tuple(items));
                }
                // Containers made whole from the items above a MARK.
                op::TUPLE | op::LIST | op::FROZENSET => {
                    let items = self.pop_mark()?;
                    self.push_node(match opcode {
                        op::TUPLE => Node::Tuple(items),
                        op::LIST => Node::List(items),
                        _ => Node::FrozenSet(items),
                    });
                }
                op::EMPTY_LIST => self.push_node(Node::List(Vec::new())),
                op::APPEND => {
                    let item = self.pop()?;
                    let target = self.top()?;
                    self.extend_list(target, vec![item])?;
                }
                op::APPENDS => {
                    let items = self.pop_mark()?;
                    let target = self.top()?;
                    self.extend_list(target, items)?;
                }
                op::EMPTY_DICT => self.push_node(Node::Dict(Vec::new())),
                op::DICT => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push_node(Node::Dict(pairs));
                }
                op::SETITEM => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    let target = self.top()?;
                    self.extend_dict(target, vec![(key, value)])?;
                }
                op::SETITEMS => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let target = self.top()?;
                    self.extend_dict(target, pairs)?;
                }
                op::EMPTY_SET => self.push_node(Node::Set(Vec::new())),
                op::ADDITEMS => {
                    let items = self.pop_mark()?;
                    let target = self.top()?;
                    match self.nodes.get_mut(target) {
                        Some(Node::Set(set)) => set.extend(items),
                        _ => return Err(self.fail("ADDITEMS to something that is not a set")),
                    }
                }
                op::GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(PyObject::Global { module, name });
                }
                op::STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&self.nodes[module], &self.nodes[name]) {
                        (Node::Leaf(PyObject::Str(module)), Node::Leaf(PyObject::Str(name))) => {
                            let global = PyObject::Global {
                                module: module.clone(),
                                name: name.clone(),
                            };
                            self.push(global);
                        }
                        _ => return Err(self.fail("STACK_GLOBAL needs two strings")),
                    }
                }
                op::REDUCE => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.push_node(Node::Call(func, args));
                }
                op::NEWOBJ => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.push_node(Node::New(cls, args, None));
                }
                op::NEWOBJ_EX => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.push_node(Node::New(cls, args, Some(kwargs)));
                }
                op::BUILD => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    // Rebuild in place, so that memo references to the object
                    // see it with its state.
                    let before = self.nodes[target].clone();
                    self.nodes.push(before);
                    let moved = self.nodes.len() - 1;
                    self.nodes[target] = Node::Build(moved, state);
                }
                op::MEMOIZE => {
                    let index = self.memo.len() as u64;
                    self.memo_put(index)?;
                }
                op::BINPUT | op::LONG_BINPUT => {
                    let index = self.operand(opcode, op::BINPUT, op::LONG_BINPUT)?;
                    self.memo_put(index)?;
                }
                op::BINGET | op::LONG_BINGET => {
                    let index = self.operand(opcode, op::BINGET, op::LONG_BINGET)?;
                    self.memo_get(index)?;
                }
                other => {
                    self.pos -= 1;
                    return Err(self.fail(format!("unsupported opcode 0x{other:02x}")));
                }
            }
        }
    }
}

/// Reads a little-endian two's-complement int. A writer may pad it with sign
/// bytes, so those are dropped first: an int that fits i64 is always `Int`
/// and a `BigInt` is always the shortest form.
fn long_from_le(mut bytes: &[u8]) -> PyObject {
    while let [rest @ .., last, top] = bytes {
        let redundant = (*top == 0x00 && *last & 0x80 == 0) || (*top == 0xff && *last & 0x80 != 0);
        if !redundant {
            break;
        }
        bytes = &bytes[..rest.len() + 1];
    }
    let Some(&top) = bytes.last() else {
        return PyObject::Int(0);
    };
    if bytes.len() <= 8 {
        let mut buf = if top & 0x80 != 0 { [0xff; 8] } else { [0; 8] };
        buf[..bytes.len()].copy_from_slice(bytes);
        return PyObject::Int(i64::from_le_bytes(buf));
    }
    PyObject::BigInt(bytes.to_vec())
}

/// Turns the arena graph into an owned tree.
struct Materializer<'a> {
    nodes: &'a [Node],
    on_path: Vec<Id>,
    budget: usize,
}

impl<'a> Materializer<'a> {
    fn tree(&mut self, id: Id) -> Result<PyObject, String> {
        if self.on_path.contains(&id) {
            return Ok(PyObject::Recursive);
        }
        self.enter(id, Self::object)
    }

    /// Runs `expand` on node `id` with `id` on the path, counted against the
    /// depth and node limits.
    fn enter<T>(
        &mut self,
        id: Id,
        expand: impl FnOnce(&mut Self, &'a Node) -> Result<T, String>,
    ) -> Result<T, String> {
        if self.on_path.len() >= MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        self.budget = self
            .budget
            .checked_sub(1)
            .ok_or_else(|| format!("more than {MAX_NODES} objects"))?;
        let nodes = self.nodes;
        let node = nodes.get(id).ok_or("dangling reference")?;
        self.on_path.push(id);
        let result = expand(self, node);
        self.on_path.pop();
        result
    }

    fn object(&mut self, node: &'a Node) -> Result<PyObject, String> {
        Ok(match node {
            Node::Leaf(object) => object.clone(),
            Node::Tuple(items) => PyObject::Tuple(self.all(items)?),
            Node::List(items) => PyObject::List(self.all(items)?),
            Node::Set(items) => PyObject::Set(self.all(items)?),
            Node::FrozenSet(items) => PyObject::FrozenSet(self.all(items)?),
            Node::Dict(entries) => PyObject::Dict(self.entries(entries)?),
            &Node::Call(func, args) => PyObject::Call {
                func: Box::new(self.tree(func)?),
                args: self.args(args)?,
            },
            &Node::New(cls, args, kwargs) => PyObject::New {
                cls: Box::new(self.tree(cls)?),
                args: self.args(args)?,
                kwargs: match kwargs {
                    Some(kwargs) => self.kwargs(kwargs)?,
                    None => Vec::new(),
                },
            },
            &Node::Build(obj, state) => PyObject::Build {
                obj: Box::new(self.tree(obj)?),
                state: Box::new(self.tree(state)?),
            },
        })
    }

    fn all(&mut self, ids: &[Id]) -> Result<Vec<PyObject>, String> {
        ids.iter().map(|&id| self.tree(id)).collect()
    }

    fn entries(&mut self, entries: &[(Id, Id)]) -> Result<Vec<(PyObject, PyObject)>, String> {
        entries
            .iter()
            .map(|&(k, v)| Ok((self.tree(k)?, self.tree(v)?)))
            .collect()
    }

    /// The arguments of a call, which Python requires to be a tuple. They
    /// are expanded even if the tuple is on the path (a cycle through it),
    /// since a call's arguments have no place for a `Recursive`; the cycle
    /// is cut at its next object instead.
    fn args(&mut self, id: Id) -> Result<Vec<PyObject>, String> {
        self.enter(id, |m, node| match node {
            Node::Tuple(items) => m.all(items),
            _ => Err("call arguments that are not a tuple".into()),
        })
    }

    /// The keyword arguments of NEWOBJ_EX, which Python requires to be a
    /// dict; expanded as [`Materializer::args`] are.
    fn kwargs(&mut self, id: Id) -> Result<Vec<(PyObject, PyObject)>, String> {
        self.enter(id, |m, node| match node {
            Node::Dict(entries) => m.entries(entries),
            _ => Err("keyword arguments that are not a dict".into()),
        })
    }
}

/// Evaluates a pickle symbolically.
pub(crate) fn loads(data: &[u8]) -> Result<PyObject, PickleError> {
    let mut machine = Machine {
        data,
        pos: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = machine.run()?;
    let end = machine.pos;
    Materializer {
        nodes: &machine.nodes,
        on_path: Vec::new(),
        budget: MAX_NODES,
    }
    .tree(root)
    .map_err(|reason| PickleError {
        offset: end,
        reason,
    })
}

impl PyObject {
    /// The items of a tuple or list.
    pub(crate) fn items(&self) -> Option<&[PyObject]> {
        match self {
            PyObject::Tuple(items) | PyObject::List(items) => Some(items),
            _ => None,
        }
    }

    /// Looks up a str key in a dict.
    pub(crate) fn get(&self, key: &str) -> Option<&PyObject> {
        match self {
            PyObject::Dict(entries) => entry(entries, key),
            _ => None,
        }
    }

    /// Renders the value roughly as Python's `repr` would, for messages.
    pub(crate) fn repr(&self) -> String {
        let mut out = String::new();
        self.write_repr(&mut out, 0);
        out
    }

    fn write_repr(&self, out: &mut String, depth: usize) {
        if depth > 20 {
            out.push_str("...");
            return;
        }
        let seq = |out: &mut String, items: &[PyObject], open: &str, close: &str| {
            out.push_str(open);
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                item.write_repr(out, depth + 1);
            }
            out.push_str(close);
        };
        match self {
            PyObject::None => out.push_str("None"),
            PyObject::Bool(true) => out.push_str("True"),
            PyObject::Bool(false) => out.push_str("False"),
            PyObject::Int(n) => out.push_str(&n.to_string()),
            PyObject::BigInt(bytes) => out.push_str(&format!("<int of {} bytes>", bytes.len())),
            PyObject::Float(f) => out.push_str(&format!("{f:?}")),
            PyObject::Str(s) => out.push_str(&format!("'{}'", s.escape_debug())),
            PyObject::Bytes(b) => {
                out.push_str("b'");
                for &byte in b {
                    match byte {
                        b'\\' => out.push_str("\\\\"),
                        b'\'' => out.push_str("\\'"),
                        b'\n' => out.push_str("\\n"),
                        b'\r' => out.push_str("\\r"),
                        b'\t' => out.push_str("\\t"),
                        0x20..=0x7e => out.push(byte as char),
                        _ => out.push_str(&format!("\\x{byte:02x}")),
                    }
                }
                out.push('\'');
            }
            PyObject::Tuple(items) if items.len() == 1 => seq(out, items, "(", ",)"),
            PyObject::Tuple(items) => seq(out, items, "(", ")"),
            PyObject::List(items) => seq(out, items, "[", "]"),
            PyObject::Set(items) => seq(out, items, "{", "}"),
            PyObject::FrozenSet(items) => seq(out, items, "frozenset({", "})"),
            PyObject::Dict(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    k.write_repr(out, depth + 1);
                    out.push_str(": ");
                    v.write_repr(out, depth + 1);
                }
                out.push('}');
            }
            PyObject::Global { module, name } => out.push_str(&format!("{module}.{name}")),
            PyObject::Call { func: callee, args }
            | PyObject::New {
                cls: callee, args, ..
            } => {
                callee.write_repr(out, depth + 1);
                seq(out, args, "(", ")");
            }
            PyObject::Build { obj, .. } => obj.write_repr(out, depth + 1),
            PyObject::Recursive => out.push_str("..."),
        }
    }
}

/// The value under the str `key` among a dict's entries (or keyword
/// arguments).
pub(crate) fn entry<'a>(entries: &'a [(PyObject, PyObject)], key: &str) -> Option<&'a PyObject> {
    super::dict_get(entries, |k| matches!(k, PyObject::Str(s) if s == key))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::frame::tests::hex;
    use super::*;

    /// The 213-byte graph pickle of `wire_examples_output.txt`.
    const GRAPH_PICKLE: &str = "\
        80048c0a6461736b2e5f657870728c074c4c474578707293 7d288c036b2d418c\
        0a73756270726f636573738c0c636865636b5f6f757470757493 5d288c092f62\
        696e2f6563686f8c0268696586 8c036b2d42288c0a6461736b2e7574696c738c\
        056170706c79938c0a73756270726f636573738c0c636865636b5f6f75747075\
        74935d285d288c082f62696e2f63617465658c086275696c74696e738c046469\
        6374935d285d288c05696e7075748c036b2d416565867475857d288c0d5f6465\
        7465726d5f746f6b656e8c06746f6b3132337592 2e";

    /// `{"resources": {"LICENSE": 1}, "retries": 2}` from the same file.
    const ANNOTATIONS_PICKLE: &str =
        "80047d288c097265736f75726365737d288c074c4943454e53454b01758c0772\
        6574726965734b02752e";

    /// `TaskRef("k-A")` from the same file.
    const TASKREF_PICKLE: &str =
        "80048c0f6461736b2e5f7461736b5f737065638c075461736b52656693 8c036b\
        2d418552 2e";

    fn s(text: &str) -> PyObject {
        PyObject::str(text)
    }

    fn check_output() -> PyObject {
        PyObject::global("subprocess", "check_output")
    }

    #[test]
    fn writes_the_documented_graph_pickle() {
        let dsk = PyObject::Dict(vec![
            (
                s("k-A"),
                PyObject::Tuple(vec![
                    check_output(),
                    PyObject::List(vec![s("/bin/echo"), s("hi")]),
                ]),
            ),
            (
                s("k-B"),
                PyObject::Tuple(vec![
                    PyObject::global("dask.utils", "apply"),
                    check_output(),
                    PyObject::List(vec![PyObject::List(vec![s("/bin/cat")])]),
                    PyObject::Tuple(vec![
                        PyObject::global("builtins", "dict"),
                        PyObject::List(vec![PyObject::List(vec![s("input"), s("k-A")])]),
                    ]),
                ]),
            ),
        ]);
        let graph = PyObject::New {
            cls: Box::new(PyObject::global("dask._expr", "LLGExpr")),
            args: vec![dsk],
            kwargs: vec![(s("_determ_token"), s("tok123"))],
        };
        let bytes = dumps(&graph);
        assert_eq!(bytes.len(), 213);
        assert_eq!(bytes, hex(GRAPH_PICKLE));
    }

    #[test]
    fn writes_the_documented_annotations_and_taskref() {
        let annotations = PyObject::Dict(vec![
            (
                s("resources"),
                PyObject::Dict(vec![(s("LICENSE"), PyObject::Int(1))]),
            ),
            (s("retries"), PyObject::Int(2)),
        ]);
        assert_eq!(dumps(&annotations), hex(ANNOTATIONS_PICKLE));
        let task_ref = PyObject::call(
            PyObject::global("dask._task_spec", "TaskRef"),
            vec![s("k-A")],
        );
        assert_eq!(dumps(&task_ref), hex(TASKREF_PICKLE));
    }

    #[test]
    fn reads_back_the_documented_pickles() {
        let graph = loads(&hex(GRAPH_PICKLE)).unwrap();
        let PyObject::New { cls, args, kwargs } = graph else {
            panic!("not NEWOBJ_EX: {graph:?}")
        };
        assert_eq!(cls.repr(), "dask._expr.LLGExpr");
        let dsk = &args[0];
        assert_eq!(
            dsk.get("k-A").unwrap().repr(),
            "(subprocess.check_output, ['/bin/echo', 'hi'])"
        );
        assert_eq!(
            entry(&kwargs, "_determ_token"),
            Some(&PyObject::Str("tok123".into()))
        );

        let annotations = loads(&hex(ANNOTATIONS_PICKLE)).unwrap();
        assert_eq!(
            annotations.repr(),
            "{'resources': {'LICENSE': 1}, 'retries': 2}"
        );
        let task_ref = loads(&hex(TASKREF_PICKLE)).unwrap();
        assert_eq!(task_ref.repr(), "dask._task_spec.TaskRef('k-A')");
    }

    #[test]
    fn numbers_round_trip() {
        for n in [
            0,
            1,
            255,
            256,
            65535,
            65536,
            -1,
            -129,
            i32::MAX as i64,
            i32::MIN as i64,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(
                loads(&dumps(&PyObject::Int(n))).unwrap(),
                PyObject::Int(n),
                "{n}"
            );
        }
        assert_eq!(
            loads(&dumps(&PyObject::Float(1.5))).unwrap(),
            PyObject::Float(1.5)
        );
        // BINFLOAT is big-endian.
        assert_eq!(
            dumps(&PyObject::Float(1.0))[2..],
            hex("47 3ff0000000000000 2e")[..]
        );
        let long = "x".repeat(300);
        assert_eq!(
            loads(&dumps(&s(&long))).unwrap(),
            PyObject::Str(long.clone())
        );
        let bytes = vec![9u8; 70_000];
        assert_eq!(
            loads(&dumps(&PyObject::Bytes(bytes.clone()))).unwrap(),
            PyObject::Bytes(bytes)
        );
        // LONG1 with a 9-byte integer (2**64) stays exact.
        assert_eq!(
            loads(&hex("80058a09000000000000000001 2e")).unwrap(),
            PyObject::BigInt(hex("000000000000000001"))
        );
        // Sign-extension padding is not part of the value: 2**63 - 1 and -1
        // padded to 9 and 12 bytes are ints, and 2**64 padded stays 9 bytes.
        for (case, expected) in [
            ("8a09 ffffffffffffff7f00 2e", PyObject::Int(i64::MAX)),
            ("8a0c ffffffffffffffffffffffff 2e", PyObject::Int(-1)),
            (
                "8a0a 00000000000000000100 2e",
                PyObject::BigInt(hex("000000000000000001")),
            ),
            ("8a00 2e", PyObject::Int(0)),
        ] {
            assert_eq!(
                loads(&hex(&format!("8005 {case}"))).unwrap(),
                expected,
                "{case}"
            );
        }
    }

    #[test]
    fn every_operand_width_reads_the_same_value() {
        let hi = || PyObject::Bytes(b"hi".to_vec());
        for (case, expected) in [
            ("8005 8a01 05 2e", PyObject::Int(5)),             // LONG1
            ("8005 8b01000000 05 2e", PyObject::Int(5)),       // LONG4
            ("8005 8c02 6869 2e", PyObject::Str("hi".into())), // SHORT_BINUNICODE
            ("8005 5802000000 6869 2e", PyObject::Str("hi".into())), // BINUNICODE
            (
                "8005 8d0200000000000000 6869 2e",
                PyObject::Str("hi".into()),
            ), // BINUNICODE8
            ("8005 4302 6869 2e", hi()),                       // SHORT_BINBYTES
            ("8005 4202000000 6869 2e", hi()),                 // BINBYTES
            ("8005 8e0200000000000000 6869 2e", hi()),         // BINBYTES8
            ("8005 960200000000000000 6869 2e", hi()),         // BYTEARRAY8
            ("8005 5502 6869 2e", hi()),                       // SHORT_BINSTRING
            ("8005 5402000000 6869 2e", hi()),                 // BINSTRING
            // BINPUT 3, BINGET 3 and LONG_BINPUT 9, LONG_BINGET 9.
            (
                "8005 4b07 7103 6803 86 2e",
                PyObject::Tuple(vec![PyObject::Int(7), PyObject::Int(7)]),
            ),
            (
                "8005 4b07 7209000000 6a09000000 86 2e",
                PyObject::Tuple(vec![PyObject::Int(7), PyObject::Int(7)]),
            ),
        ] {
            assert_eq!(loads(&hex(case)).unwrap(), expected, "{case}");
        }
    }

    #[test]
    fn memo_references_share_objects_filled_later() {
        // EMPTY_LIST MEMOIZE MARK BININT1 1 APPENDS BINGET 0 TUPLE2: the list
        // is memoised while empty and filled afterwards, so both tuple items
        // must show the item (as protocol 5 picklers share objects).
        let shared = hex("8005 5d94 28 4b01 65 6800 86 2e");
        let one = PyObject::List(vec![PyObject::Int(1)]);
        assert_eq!(
            loads(&shared).unwrap(),
            PyObject::Tuple(vec![one.clone(), one])
        );
        // EMPTY_LIST MEMOIZE MARK BINGET 0 BININT1 1 APPENDS: a list that
        // contains itself ends the recursion with a marker.
        let cyclic = hex("8005 5d94 28 6800 4b01 65 2e");
        assert_eq!(
            loads(&cyclic).unwrap(),
            PyObject::List(vec![PyObject::Recursive, PyObject::Int(1)])
        );
        // BUILD on a memoised object is visible through the memo.
        let built = hex("8005 5d94 4b07 62 6800 86 2e");
        let PyObject::Tuple(items) = loads(&built).unwrap() else {
            panic!()
        };
        assert!(matches!(&items[1], PyObject::Build { .. }), "{items:?}");
    }

    #[test]
    fn malformed_pickles_are_errors() {
        for case in [
            "",
            "80",
            "8005",
            "800565",                     // APPENDS without mark
            "80054b01612e",               // APPEND onto an int
            "8005680a2e",                 // BINGET of a missing memo entry
            "80058c05616263",             // string runs past the end
            "8005ff",                     // unknown opcode
            "80054b0193",                 // STACK_GLOBAL with one item
            "8005284b01302e",             // POP under a mark
            "800595ffffffffffffffff",     // FRAME then nothing
            "8005 8dffffffffffffffff 2e", // huge BINUNICODE8
        ] {
            assert!(loads(&hex(case)).is_err(), "accepted {case}");
        }
    }

    #[test]
    fn deep_or_exploding_pickles_are_refused() {
        // 10_000 nested lists: the VM is iterative, the tree is depth-limited.
        let mut deep = vec![0x80, 5];
        for _ in 0..10_000 {
            deep.extend([b']', b'(']);
        }
        deep.push(b']');
        deep.resize(deep.len() + 10_000, b'e');
        deep.push(b'.');
        assert!(loads(&deep).is_err());

        // A DAG of 64 levels each referencing the previous twice would expand
        // to 2^64 nodes; the node budget stops it.
        let mut dag = vec![0x80, 5, b'N', 0x94];
        for level in 0..64u8 {
            dag.extend([b'h', level, b'h', level, 0x86, 0x94]);
        }
        dag.push(b'.');
        assert!(loads(&dag).is_err());
    }

    fn int(n: i64) -> PyObject {
        PyObject::Int(n)
    }

    fn new(cls: PyObject, args: Vec<PyObject>, kwargs: Vec<(PyObject, PyObject)>) -> PyObject {
        PyObject::New {
            cls: Box::new(cls),
            args,
            kwargs,
        }
    }

    fn build(obj: PyObject, state: PyObject) -> PyObject {
        PyObject::Build {
            obj: Box::new(obj),
            state: Box::new(state),
        }
    }

    fn namespace() -> PyObject {
        new(PyObject::global("types", "SimpleNamespace"), vec![], vec![])
    }

    #[test]
    fn writes_every_kind_of_object_with_the_opcodes_cpython_uses() {
        // What `pickle.dumps(value, 4)` writes, less FRAME and the memo
        // entries nothing refers to (`pickletools.optimize`).
        for (value, expected) in [
            (PyObject::Bool(true), "88"),
            (PyObject::Bool(false), "89"),
            // 2**64 and -2**64: LONG1 with the shortest bytes.
            (
                PyObject::BigInt(hex("000000000000000001")),
                "8a09 000000000000000001",
            ),
            (
                PyObject::BigInt(hex("0000000000000000ff")),
                "8a09 0000000000000000ff",
            ),
            (PyObject::Set(vec![]), "8f"),
            (PyObject::Set(vec![int(1), int(2)]), "8f 28 4b01 4b02 90"),
            (PyObject::FrozenSet(vec![int(1), int(2)]), "28 4b01 4b02 91"),
            // A class reduced with copyreg.__newobj__: NEWOBJ.
            (
                new(PyObject::global("m", "C"), vec![int(1)], vec![]),
                "8c016d 8c0143 93 4b01 85 81",
            ),
            (
                build(namespace(), PyObject::Dict(vec![(s("a"), int(1))])),
                "8c057479706573 8c0f53696d706c654e616d657370616365 93 29 81 \
                 7d 28 8c0161 4b01 75 62",
            ),
            // `l = [1]; l.append(l)`: the list is memoised while empty.
            (
                PyObject::List(vec![int(1), PyObject::Recursive]),
                "5d 94 28 4b01 6800 65",
            ),
        ] {
            let mut bytes = hex("8004");
            bytes.extend(hex(expected));
            bytes.push(op::STOP);
            assert_eq!(dumps(&value), bytes, "{value:?}");
        }
    }

    #[test]
    fn writes_a_recursive_reference_to_the_nearest_object_it_can_name() {
        // `ns.me = ns`: the object is memoised after it is made and before
        // its state, which refers to it (not to the state dict).
        let ns = build(
            namespace(),
            PyObject::Dict(vec![(s("me"), PyObject::Recursive)]),
        );
        let bytes = dumps(&ns);
        let state = hex("94 7d 28 8c026d65 6800 75 62 2e");
        assert!(bytes.ends_with(&state), "{bytes:02x?}");
        assert_eq!(loads(&bytes).unwrap(), ns);
        // In a tuple in a list in a dict, it refers to the list, the nearest
        // object made before its items.
        let nested = PyObject::Dict(vec![(
            s("k"),
            PyObject::List(vec![PyObject::Tuple(vec![PyObject::Recursive])]),
        )]);
        assert_eq!(
            dumps(&nested),
            hex("8004 7d 28 8c016b 5d 94 28 6800 85 65 75 2e")
        );
        // With nothing around it to refer to, it is None.
        assert_eq!(dumps(&PyObject::Recursive), hex("8004 4e 2e"));
        assert_eq!(
            dumps(&PyObject::Tuple(vec![PyObject::Recursive])),
            hex("8004 4e 85 2e")
        );
    }

    #[test]
    fn a_cycle_through_call_arguments_is_cut_inside_them() {
        // t = (l,) with l = [], then l.append(len(*t)): the call's arguments
        // are the tuple that contains the call.
        let pickle =
            hex("8005 5d 94 85 94 6800 8c086275696c74696e73 8c036c656e 93 6801 52 61 30 2e");
        let expected = PyObject::Tuple(vec![PyObject::List(vec![PyObject::call(
            PyObject::global("builtins", "len"),
            vec![PyObject::Recursive],
        )])]);
        let read = loads(&pickle).unwrap();
        assert_eq!(read, expected);
        assert_eq!(loads(&dumps(&read)).unwrap(), expected);
    }

    #[test]
    fn call_arguments_that_python_would_refuse_are_errors() {
        for case in [
            "8005 4e 5d 52 2e",    // REDUCE with a list of arguments
            "8005 4e 4b01 81 2e",  // NEWOBJ with an int of arguments
            "8005 4e 29 5d 92 2e", // NEWOBJ_EX with a list of keyword arguments
        ] {
            assert!(loads(&hex(case)).is_err(), "accepted {case}");
        }
        // NEWOBJ_EX with an empty dict is NEWOBJ, as CPython writes it.
        let read = loads(&hex("8005 4e 29 7d 92 2e")).unwrap();
        assert_eq!(read, new(PyObject::None, vec![], vec![]));
        assert_eq!(dumps(&read), hex("8004 4e 29 81 2e"));
    }

    #[test]
    fn cpython_unpickles_what_the_writer_writes_into_the_expected_objects() {
        use std::io::Write;
        use std::process::{Command, Stdio};

        let global = PyObject::global;
        let cases = [
            (PyObject::None, "None"),
            (PyObject::Bool(true), "True"),
            (int(-1 << 40), "-1099511627776"),
            (int(i64::MIN), "-9223372036854775808"),
            (
                PyObject::BigInt(hex("000000000000000001")),
                "18446744073709551616",
            ),
            (
                PyObject::BigInt(hex("0000000000000000ff")),
                "-18446744073709551616",
            ),
            (PyObject::Float(-1.5), "-1.5"),
            (s("h\u{e9}"), "'h\u{e9}'"),
            (PyObject::Bytes(b"\0hi".to_vec()), r"b'\x00hi'"),
            (
                PyObject::Tuple((1..=5).map(int).collect()),
                "(1, 2, 3, 4, 5)",
            ),
            (PyObject::Set(vec![int(1), int(2)]), "{1, 2}"),
            (
                PyObject::FrozenSet(vec![int(1), int(2)]),
                "frozenset({1, 2})",
            ),
            (
                PyObject::Dict(vec![(s("a"), PyObject::List(vec![]))]),
                "{'a': []}",
            ),
            (global("builtins", "len"), "<built-in function len>"),
            (
                PyObject::call(global("builtins", "complex"), vec![int(1), int(2)]),
                "(1+2j)",
            ),
            (new(global("builtins", "int"), vec![int(5)], vec![]), "5"),
            (
                new(
                    global("datetime", "timedelta"),
                    vec![],
                    vec![(s("days"), int(1))],
                ),
                "datetime.timedelta(days=1)",
            ),
            (
                build(namespace(), PyObject::Dict(vec![(s("a"), int(1))])),
                "namespace(a=1)",
            ),
            (
                PyObject::List(vec![int(1), PyObject::Recursive]),
                "[1, [...]]",
            ),
            (
                PyObject::Dict(vec![(s("t"), PyObject::Tuple(vec![PyObject::Recursive]))]),
                "{'t': ({...},)}",
            ),
            (
                build(
                    namespace(),
                    PyObject::Dict(vec![(s("me"), PyObject::Recursive)]),
                ),
                "namespace(me=namespace(...))",
            ),
        ];
        let script = "import pickle, sys\n\
                      for line in sys.stdin:\n    \
                      print(repr(pickle.loads(bytes.fromhex(line))))\n";
        // Only the standard library's pickle: any python3 (3.4 or later) will
        // do, and CI has one.
        let mut child = Command::new("python3")
            .args(["-c", script])
            .env("PYTHONIOENCODING", "utf-8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
        let mut input = String::new();
        for (value, _) in &cases {
            input.extend(dumps(value).iter().map(|b| format!("{b:02x}")));
            input.push('\n');
        }
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        drop(stdin);
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let reprs = String::from_utf8(output.stdout).unwrap();
        let reprs: Vec<&str> = reprs.lines().collect();
        let expected: Vec<&str> = cases.iter().map(|(_, repr)| *repr).collect();
        assert_eq!(reprs, expected);
    }

    /// An int beyond i64 in its shortest form: 9 to 40 bytes whose last
    /// byte is not sign extension.
    fn big_int() -> impl Strategy<Value = PyObject> {
        (
            prop::collection::vec(any::<u8>(), 8..40),
            prop_oneof![1..=0x7fu8, 0x80..=0xfeu8],
        )
            .prop_map(|(mut bytes, top)| {
                bytes.push(top);
                PyObject::BigInt(bytes)
            })
    }

    fn scalar() -> impl Strategy<Value = PyObject> {
        let text = prop_oneof![
            ".{0,8}".boxed(),
            // Past SHORT_BINUNICODE's and SHORT_BINBYTES's one-byte length.
            ".{250,300}".boxed(),
        ];
        prop_oneof![
            Just(PyObject::None),
            any::<bool>().prop_map(PyObject::Bool),
            any::<i64>().prop_map(PyObject::Int),
            (-70_000i64..70_000).prop_map(PyObject::Int),
            big_int(),
            prop::num::f64::ANY
                .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
                .prop_map(PyObject::Float),
            text.prop_map(PyObject::Str),
            prop::collection::vec(any::<u8>(), 0..300).prop_map(PyObject::Bytes),
            ("[a-z_.]{1,12}", "[A-Za-z_.]{1,12}")
                .prop_map(|(module, name)| PyObject::Global { module, name }),
            Just(PyObject::Recursive),
        ]
    }

    /// Any object, a few levels deep.
    fn object() -> impl Strategy<Value = PyObject> {
        scalar().prop_recursive(4, 48, 5, |inner| {
            let items = prop::collection::vec(inner.clone(), 0..5);
            let entries = prop::collection::vec((inner.clone(), inner.clone()), 0..4);
            let boxed = inner.clone().prop_map(Box::new);
            prop_oneof![
                items.clone().prop_map(PyObject::Tuple),
                items.clone().prop_map(PyObject::List),
                items.clone().prop_map(PyObject::Set),
                items.clone().prop_map(PyObject::FrozenSet),
                entries.clone().prop_map(PyObject::Dict),
                (boxed.clone(), items.clone())
                    .prop_map(|(func, args)| PyObject::Call { func, args }),
                (boxed.clone(), items, entries).prop_map(|(cls, args, kwargs)| PyObject::New {
                    cls,
                    args,
                    kwargs
                }),
                (boxed.clone(), boxed).prop_map(|(obj, state)| PyObject::Build { obj, state }),
            ]
        })
    }

    /// `value` with every `Recursive` that the writer writes as None (see
    /// [`PyObject::Recursive`]) made None: what the reader can return.
    /// `enclosed` says whether `value` has an object around it to refer to.
    fn readable(value: PyObject, enclosed: bool) -> PyObject {
        let all = |items: Vec<PyObject>, enclosed| {
            items
                .into_iter()
                .map(|item| readable(item, enclosed))
                .collect::<Vec<_>>()
        };
        let entries = |entries: Vec<(PyObject, PyObject)>| {
            entries
                .into_iter()
                .map(|(k, v)| (readable(k, true), readable(v, true)))
                .collect()
        };
        match value {
            PyObject::Recursive if !enclosed => PyObject::None,
            PyObject::Tuple(items) => PyObject::Tuple(all(items, enclosed)),
            PyObject::FrozenSet(items) => PyObject::FrozenSet(all(items, enclosed)),
            PyObject::List(items) => PyObject::List(all(items, true)),
            PyObject::Set(items) => PyObject::Set(all(items, true)),
            PyObject::Dict(items) => PyObject::Dict(entries(items)),
            PyObject::Call { func, args } => PyObject::Call {
                func: Box::new(readable(*func, enclosed)),
                args: all(args, enclosed),
            },
            PyObject::New { cls, args, kwargs } => PyObject::New {
                cls: Box::new(readable(*cls, enclosed)),
                args: all(args, enclosed),
                kwargs: entries(kwargs),
            },
            PyObject::Build { obj, state } => PyObject::Build {
                obj: match *obj {
                    PyObject::Recursive => Box::new(PyObject::None),
                    obj => Box::new(readable(obj, enclosed)),
                },
                state: Box::new(readable(*state, true)),
            },
            other => other,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn reading_what_the_writer_wrote_gives_the_same_object(value in object()) {
            let value = readable(value, false);
            let bytes = dumps(&value);
            prop_assert_eq!(loads(&bytes), Ok(value));
        }
    }
}
