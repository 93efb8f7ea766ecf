//! A linearizability checker for histories of key/value operations, written for the fault
//! tests: every client operation is recorded with the instant it was invoked and the instant
//! its answer arrived, and the checker decides whether some total order of the operations
//! (a) respects real time — an operation that completed before another was invoked comes
//! first — and (b) is a legal run of one register per key with compare-and-set.
//!
//! # Algorithm
//! Wing & Gong's search, with the refinements Lowe, Knossos and Porcupine describe:
//!
//! * **Partition by key.** Keys are independent registers, so each key's history is checked on
//!   its own (linearizability is compositional); a few thousand operations per key stay cheap.
//! * **Events in a linked list.** Each operation gives a call event and a return event, sorted
//!   by time (a call before a return at the same instant: touching intervals count as
//!   concurrent). The search repeatedly picks, among the calls that come before the first
//!   remaining return, one whose effect the model accepts in the current state, and *lifts*
//!   that operation (its call and return) out of the list in O(1); reaching a return means that
//!   operation had to be ordered already, so the search backtracks: it pops the last choice,
//!   restores the model state and *unlifts* the operation in O(1) (dancing links), and tries
//!   the next call after it.
//! * **Memoisation.** A configuration is the set of operations linearized so far (a bitset)
//!   plus the model state; the search never enters one it has seen, which bounds the work by
//!   the number of distinct configurations instead of the number of orders.
//! * **Unknown outcomes.** An operation whose answer never came (timeout, connection broken
//!   after the request was sent) may have taken effect at any instant after its invocation, or
//!   never. It gets a return event at +infinity and the model accepts it with any output: a
//!   write may land anywhere after its call (placed after everything else, it is as if it never
//!   happened); a compare-and-set applies when its expectation holds where it is placed and is
//!   a no-op otherwise. Reads with unknown outcome observe nothing and are dropped, as are
//!   operations known to have failed without effect.
//! * **Taming unknown outcomes.** A fault can leave hundreds of operations unknown, and a
//!   naive search then explores every subset of them. Three reductions keep it small, each
//!   exact: (1) values nobody ever read (no read returned them, no compare-and-set expected
//!   them) are indistinguishable to every operation, so they are one model state; (2) an
//!   unknown operation is never placed where it would change nothing — such a placement is
//!   equivalent to placing it after everything, which is always possible — and once only
//!   unknown operations remain the history is accepted; (3) unknown operations with the same
//!   effect are interchangeable once invoked, so they are placed in invocation order only.
//!
//! When no order exists the error names the key and explains the deepest point the search
//! reached: the operations ordered so far (the last few), the model state there, and for the
//! operation that had to come next, why each candidate was refused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    Read,
    Write(String),
    /// Write `new` only if the key's value is `expected` (`None`: only if absent).
    Cas {
        expected: Option<String>,
        new: String,
    },
    Delete,
}

/// What the server answered, for an operation that completed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    Read(Option<String>),
    Write,
    /// Whether the compare-and-set applied.
    Cas(bool),
    Delete,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The answer arrived at `at` (time since the history's start).
    Done { at: Duration, ret: Ret },
    /// No answer: it may have taken effect at any instant after its invocation, or never.
    Unknown,
    /// Certainly had no effect (e.g. refused as invalid before anything was written).
    Failed,
}

/// One client operation on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub call: Call,
    /// When it was sent (time since the history's start).
    pub invoke: Duration,
    pub outcome: Outcome,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let call = match &self.call {
            Call::Read => "read".to_string(),
            Call::Write(v) => format!("write {v:?}"),
            Call::Cas { expected, new } => format!("cas {expected:?} -> {new:?}"),
            Call::Delete => "delete".to_string(),
        };
        let end = match &self.outcome {
            Outcome::Done { at, ret } => {
                let ret = match ret {
                    Ret::Read(v) => format!("read {v:?}"),
                    Ret::Write => "ok".into(),
                    Ret::Cas(b) => format!("{b}"),
                    Ret::Delete => "ok".into(),
                };
                format!(
                    "= {ret} [{:.3}s..{:.3}s]",
                    self.invoke.as_secs_f64(),
                    at.as_secs_f64()
                )
            }
            Outcome::Unknown => format!("= unknown [{:.3}s..]", self.invoke.as_secs_f64()),
            Outcome::Failed => format!("= failed [{:.3}s]", self.invoke.as_secs_f64()),
        };
        write!(f, "client {} {} {call} {end}", self.client, self.key)
    }
}

/// A thread-safe recorder: clients call [`Recorder::invoke`] right before sending and
/// [`Recorder::complete`] right after the answer (or the failure) arrives.
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

/// The handle of an invoked operation, for its completion.
#[derive(Clone, Copy, Debug)]
pub struct OpId(usize);

/// How an invoked operation ended, as the recorder takes it.
pub enum Completion {
    Ok(Ret),
    Unknown,
    Failed,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Time since the recorder was made: the history's clock.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// The history's clock reading of `instant`.
    pub fn at(&self, instant: Instant) -> Duration {
        instant.saturating_duration_since(self.start)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Op>> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the invocation now. Until completed, the operation counts as unknown.
    pub fn invoke(&self, client: usize, key: &str, call: Call) -> OpId {
        let mut ops = self.lock();
        ops.push(Op {
            client,
            key: key.to_string(),
            call,
            invoke: self.start.elapsed(),
            outcome: Outcome::Unknown,
        });
        OpId(ops.len() - 1)
    }

    /// Records an invocation that happened at `at` (the history's clock), e.g. a read whose
    /// request went out before the caller knew which keys it would cover.
    pub fn invoke_at(&self, client: usize, key: &str, call: Call, at: Duration) -> OpId {
        let mut ops = self.lock();
        ops.push(Op {
            client,
            key: key.to_string(),
            call,
            invoke: at,
            outcome: Outcome::Unknown,
        });
        OpId(ops.len() - 1)
    }

    /// Records how `id` ended, now.
    pub fn complete(&self, id: OpId, completion: Completion) {
        let at = self.start.elapsed();
        let mut ops = self.lock();
        ops[id.0].outcome = match completion {
            Completion::Ok(ret) => Outcome::Done { at, ret },
            Completion::Unknown => Outcome::Unknown,
            Completion::Failed => Outcome::Failed,
        };
    }

    /// A copy of everything recorded so far.
    pub fn history(&self) -> Vec<Op> {
        self.lock().clone()
    }
}

/// Why a history is not linearizable (or could not be decided).
#[derive(Debug)]
pub struct Violation {
    pub key: String,
    pub explanation: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {:?} is not linearizable: {}",
            self.key, self.explanation
        )
    }
}

impl std::error::Error for Violation {}

/// What a successful check covered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub keys: usize,
    /// Operations checked (completed ones and unknown ones that may have taken effect).
    pub ops: usize,
    pub unknown: usize,
    /// The largest number of operations one key had.
    pub max_ops_per_key: usize,
}

/// Checks `history` with a time budget of 60 s per key; see [`check_with_budget`].
pub fn check(history: &[Op]) -> Result<Summary, Violation> {
    check_with_budget(history, Duration::from_secs(60))
}

/// Checks `history`; a key whose search takes longer than `budget` is reported as a
/// [`Violation`] saying it could not be decided (never as a pass).
pub fn check_with_budget(history: &[Op], budget: Duration) -> Result<Summary, Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        validate(op);
        let relevant = !matches!(
            (&op.call, &op.outcome),
            (_, Outcome::Failed) | (Call::Read, Outcome::Unknown)
        );
        if relevant {
            by_key.entry(op.key.as_str()).or_default().push(op);
        }
    }
    let mut summary = Summary {
        keys: by_key.len(),
        ..Summary::default()
    };
    for (key, ops) in by_key {
        summary.ops += ops.len();
        summary.unknown += ops.iter().filter(|o| o.outcome == Outcome::Unknown).count();
        summary.max_ops_per_key = summary.max_ops_per_key.max(ops.len());
        KeySearch::new(&ops)
            .run(budget)
            .map_err(|explanation| Violation {
                key: key.to_string(),
                explanation,
            })?;
    }
    Ok(summary)
}

fn validate(op: &Op) {
    if let Outcome::Done { at, ret } = &op.outcome {
        let matches = matches!(
            (&op.call, ret),
            (Call::Read, Ret::Read(_))
                | (Call::Write(_), Ret::Write)
                | (Call::Cas { .. }, Ret::Cas(_))
                | (Call::Delete, Ret::Delete)
        );
        assert!(matches, "operation and answer do not match: {op}");
        assert!(
            *at >= op.invoke,
            "operation completed before it was invoked: {op}"
        );
    }
}

/// Model state: the key's value as an interned id, `NONE` when absent.
type State = u32;
const NONE: State = u32::MAX;
/// Any value no operation ever observed (see the module docs).
const UNSEEN: State = u32::MAX - 1;

/// An operation in the form the model steps on: values interned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Step {
    Read(State),
    Write(State),
    CasOk {
        expected: State,
        new: State,
    },
    CasFailed {
        expected: State,
    },
    /// Outcome unknown: applies if `expected` holds, else changes nothing.
    CasUnknown {
        expected: State,
        new: State,
    },
    Delete,
}

impl Step {
    /// The state after this step from `state`, or None if the step cannot happen there.
    fn apply(self, state: State) -> Option<State> {
        match self {
            Step::Read(v) => (v == state).then_some(state),
            Step::Write(v) => Some(v),
            Step::CasOk { expected, new } => (expected == state).then_some(new),
            Step::CasFailed { expected } => (expected != state).then_some(state),
            Step::CasUnknown { expected, new } => Some(if expected == state { new } else { state }),
            Step::Delete => Some(NONE),
        }
    }
}

const NIL: usize = usize::MAX;

/// One node of the event list: a call or a return of operation `op`.
#[derive(Clone, Copy)]
struct Node {
    op: usize,
    is_call: bool,
    /// For a call: the node of its return.
    ret: usize,
    prev: usize,
    next: usize,
}

/// The search over one key's operations.
struct KeySearch<'a> {
    ops: Vec<&'a Op>,
    steps: Vec<Step>,
    names: Vec<String>,
    /// For an operation with unknown outcome: its class of same-effect unknown operations and
    /// its rank in the class (invocation order). `NIL` for the others.
    class_of: Vec<(usize, usize)>,
    /// Per class: how many of its operations are placed (always the first ones).
    placed: Vec<usize>,
    /// Node 0 is the list head (a sentinel).
    nodes: Vec<Node>,
}

/// The deepest point a failed search reached, for the explanation.
struct Deepest {
    order: Vec<usize>,
    state: State,
    /// The operation whose return was reached before it could be ordered.
    blocked: usize,
    /// Calls that were open there (candidates), each refused.
    candidates: Vec<usize>,
}

impl<'a> KeySearch<'a> {
    fn new(ops: &[&'a Op]) -> KeySearch<'a> {
        // Values someone observed: read results and compare-and-set expectations.
        let mut observed: HashSet<&str> = HashSet::new();
        for op in ops {
            match (&op.call, &op.outcome) {
                (
                    _,
                    Outcome::Done {
                        ret: Ret::Read(Some(v)),
                        ..
                    },
                ) => {
                    observed.insert(v);
                }
                (
                    Call::Cas {
                        expected: Some(v), ..
                    },
                    _,
                ) => {
                    observed.insert(v);
                }
                _ => {}
            }
        }
        let mut ids: HashMap<String, State> = HashMap::new();
        let mut names: Vec<String> = Vec::new();
        let mut intern = |v: &Option<String>| -> State {
            match v {
                None => NONE,
                Some(v) if !observed.contains(v.as_str()) => UNSEEN,
                Some(v) => *ids.entry(v.clone()).or_insert_with(|| {
                    names.push(v.clone());
                    (names.len() - 1) as State
                }),
            }
        };
        let steps: Vec<Step> = ops
            .iter()
            .map(|op| match (&op.call, &op.outcome) {
                (
                    Call::Read,
                    Outcome::Done {
                        ret: Ret::Read(v), ..
                    },
                ) => Step::Read(intern(v)),
                (Call::Write(v), _) => Step::Write(intern(&Some(v.clone()))),
                (Call::Cas { expected, new }, outcome) => {
                    let expected = intern(expected);
                    let new = intern(&Some(new.clone()));
                    match outcome {
                        Outcome::Done {
                            ret: Ret::Cas(true),
                            ..
                        } => Step::CasOk { expected, new },
                        Outcome::Done { .. } => Step::CasFailed { expected },
                        _ => Step::CasUnknown { expected, new },
                    }
                }
                (Call::Delete, _) => Step::Delete,
                (Call::Read, _) => unreachable!("unknown reads are dropped before the search"),
            })
            .collect();

        // Events: (time, calls before returns, op). Unknown outcomes return at +infinity.
        let mut events: Vec<(u128, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.invoke.as_nanos(), 0, i));
            let end = match &op.outcome {
                Outcome::Done { at, .. } => at.as_nanos(),
                _ => u128::MAX,
            };
            events.push((end, 1, i));
        }
        events.sort_unstable();
        let mut nodes = vec![Node {
            op: NIL,
            is_call: false,
            ret: NIL,
            prev: NIL,
            next: NIL,
        }];
        let mut ret_node = vec![NIL; ops.len()];
        for (_, kind, op) in &events {
            let idx = nodes.len();
            nodes.push(Node {
                op: *op,
                is_call: *kind == 0,
                ret: NIL,
                prev: idx - 1,
                next: NIL,
            });
            nodes[idx - 1].next = idx;
            if *kind == 1 {
                ret_node[*op] = idx;
            }
        }
        for node in nodes.iter_mut().skip(1) {
            if node.is_call {
                node.ret = ret_node[node.op];
            }
        }
        // Classes of unknown operations with the same effect, members in event order.
        let mut class_ids: HashMap<Step, usize> = HashMap::new();
        let mut class_sizes: Vec<usize> = Vec::new();
        let mut class_of = vec![(NIL, NIL); ops.len()];
        for node in nodes.iter().skip(1).filter(|n| n.is_call) {
            if ops[node.op].outcome == Outcome::Unknown {
                let next = class_ids.len();
                let class = *class_ids.entry(steps[node.op]).or_insert(next);
                if class == class_sizes.len() {
                    class_sizes.push(0);
                }
                class_of[node.op] = (class, class_sizes[class]);
                class_sizes[class] += 1;
            }
        }
        KeySearch {
            ops: ops.to_vec(),
            steps,
            names,
            class_of,
            placed: vec![0; class_sizes.len()],
            nodes,
        }
    }

    fn is_unknown(&self, op: usize) -> bool {
        self.class_of[op].0 != NIL
    }

    fn unlink(&mut self, n: usize) {
        let Node { prev, next, .. } = self.nodes[n];
        self.nodes[prev].next = next;
        if next != NIL {
            self.nodes[next].prev = prev;
        }
    }

    fn relink(&mut self, n: usize) {
        let Node { prev, next, .. } = self.nodes[n];
        self.nodes[prev].next = n;
        if next != NIL {
            self.nodes[next].prev = n;
        }
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.nodes[call].ret);
    }

    fn unlift(&mut self, call: usize) {
        self.relink(self.nodes[call].ret);
        self.relink(call);
    }

    fn run(mut self, budget: Duration) -> Result<(), String> {
        let started = Instant::now();
        let words = self.ops.len().div_ceil(64);
        let mut linearized = vec![0u64; words];
        let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
        // The choices made: (call node, state before it).
        let mut stack: Vec<(usize, State)> = Vec::new();
        let mut state: State = NONE;
        let mut deepest: Option<Deepest> = None;
        let mut entry = self.nodes[0].next;
        let mut iterations: u64 = 0;
        while self.nodes[0].next != NIL {
            iterations += 1;
            if iterations & 0xfff == 0 && started.elapsed() > budget {
                return Err(format!(
                    "undecided: the search over {} operations did not finish within {budget:?} \
                     ({} configurations visited)",
                    self.ops.len(),
                    seen.len()
                ));
            }
            let node = self.nodes[entry];
            if node.is_call {
                let next_state = self.steps[node.op].apply(state);
                let allowed = match (next_state, self.class_of[node.op]) {
                    (None, _) => false,
                    (Some(_), (NIL, _)) => true,
                    // Unknown: only the first unplaced of its class, and only where it changes
                    // something (see the module docs).
                    (Some(next), (class, rank)) => rank == self.placed[class] && next != state,
                };
                if let (true, Some(next_state)) = (allowed, next_state) {
                    let (word, bit) = (node.op / 64, 1u64 << (node.op % 64));
                    linearized[word] |= bit;
                    if seen.insert((linearized.clone(), next_state)) {
                        stack.push((entry, state));
                        state = next_state;
                        let (class, rank) = self.class_of[node.op];
                        if rank != NIL {
                            self.placed[class] += 1;
                        }
                        self.lift(entry);
                        entry = self.nodes[0].next;
                        continue;
                    }
                    linearized[word] &= !bit;
                }
                entry = node.next;
            } else if self.is_unknown(node.op) {
                // Every known operation is placed; the unknown ones left can all go after them.
                return Ok(());
            } else {
                // A return reached: its operation should have been ordered by now.
                if deepest.as_ref().is_none_or(|d| stack.len() > d.order.len()) {
                    deepest = Some(self.snapshot(&stack, state, node.op));
                }
                let Some((call, before)) = stack.pop() else {
                    return Err(self.explain(deepest));
                };
                state = before;
                let op = self.nodes[call].op;
                linearized[op / 64] &= !(1u64 << (op % 64));
                let (class, rank) = self.class_of[op];
                if rank != NIL {
                    self.placed[class] -= 1;
                }
                self.unlift(call);
                entry = self.nodes[call].next;
            }
        }
        Ok(())
    }

    fn snapshot(&self, stack: &[(usize, State)], state: State, blocked: usize) -> Deepest {
        let mut candidates = Vec::new();
        let mut n = self.nodes[0].next;
        while n != NIL && self.nodes[n].is_call {
            candidates.push(self.nodes[n].op);
            n = self.nodes[n].next;
        }
        Deepest {
            order: stack.iter().map(|(call, _)| self.nodes[*call].op).collect(),
            state,
            blocked,
            candidates,
        }
    }

    fn value(&self, s: State) -> String {
        if s == NONE {
            "absent".to_string()
        } else if s == UNSEEN {
            "a value no operation read".to_string()
        } else {
            format!("{:?}", self.names[s as usize])
        }
    }

    /// The value at the end of `order` in words; an unread value is named by the operation
    /// that wrote it.
    fn current(&self, state: State, order: &[usize]) -> String {
        if state != UNSEEN {
            return self.value(state);
        }
        let writer = order.iter().rev().find(|&&op| {
            matches!(
                self.steps[op],
                Step::Write(UNSEEN)
                    | Step::CasOk { new: UNSEEN, .. }
                    | Step::CasUnknown { new: UNSEEN, .. }
            )
        });
        match writer.map(|&op| &self.ops[op].call) {
            Some(Call::Write(v)) | Some(Call::Cas { new: v, .. }) => {
                format!("{v:?} (which no operation read)")
            }
            _ => self.value(state),
        }
    }

    fn refusal(&self, op: usize, current: &str) -> String {
        match self.steps[op] {
            Step::Read(v) => format!("it read {} but the value was {current}", self.value(v)),
            Step::CasOk { expected, .. } => format!(
                "it succeeded expecting {} but the value was {current}",
                self.value(expected)
            ),
            Step::CasFailed { expected } => format!(
                "it failed although the value was the expected {}",
                self.value(expected)
            ),
            _ => "it leads only to configurations already ruled out".to_string(),
        }
    }

    fn explain(&self, deepest: Option<Deepest>) -> String {
        let Some(d) = deepest else {
            return "no operation could be ordered first".to_string();
        };
        let mut s = format!(
            "{} operations; at most {} could be ordered. ",
            self.ops.len(),
            d.order.len()
        );
        if !d.order.is_empty() {
            let from = d.order.len().saturating_sub(5);
            s.push_str("The last ordered were:");
            for &op in &d.order[from..] {
                s.push_str(&format!("\n    {}", self.ops[op]));
            }
            s.push('\n');
        }
        s.push_str(&format!(
            "leaving the value {}. Then this operation had to be ordered before its answer:\n    {}\n",
            self.current(d.state, &d.order),
            self.ops[d.blocked]
        ));
        s.push_str("and none of the operations open at that point fits there:");
        for &op in &d.candidates {
            s.push_str(&format!(
                "\n    {} — {}",
                self.ops[op],
                self.refusal(op, &self.current(d.state, &d.order))
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn op(client: usize, call: Call, from: u64, to: Option<(u64, Ret)>) -> Op {
        Op {
            client,
            key: "k".into(),
            call,
            invoke: ms(from),
            outcome: match to {
                Some((at, ret)) => Outcome::Done { at: ms(at), ret },
                None => Outcome::Unknown,
            },
        }
    }

    fn w(v: &str) -> Call {
        Call::Write(v.into())
    }

    fn r(v: Option<&str>) -> Ret {
        Ret::Read(v.map(str::to_string))
    }

    #[test]
    fn sequential_history_is_accepted() {
        let h = vec![
            op(0, w("a"), 0, Some((1, Ret::Write))),
            op(1, Call::Read, 2, Some((3, r(Some("a"))))),
            op(
                0,
                Call::Cas {
                    expected: Some("a".into()),
                    new: "b".into(),
                },
                4,
                Some((5, Ret::Cas(true))),
            ),
            op(
                1,
                Call::Cas {
                    expected: Some("a".into()),
                    new: "c".into(),
                },
                6,
                Some((7, Ret::Cas(false))),
            ),
            op(1, Call::Read, 8, Some((9, r(Some("b"))))),
            op(0, Call::Delete, 10, Some((11, Ret::Delete))),
            op(1, Call::Read, 12, Some((13, r(None)))),
        ];
        let s = check(&h).expect("linearizable");
        assert_eq!((s.keys, s.ops), (1, 7));
    }

    #[test]
    fn stale_read_after_a_completed_write_is_rejected() {
        let h = vec![
            op(0, w("a"), 0, Some((1, Ret::Write))),
            op(0, w("b"), 2, Some((3, Ret::Write))),
            op(1, Call::Read, 4, Some((5, r(Some("a"))))),
        ];
        let err = check(&h).expect_err("stale read must be rejected");
        assert_eq!(err.key, "k");
        let text = err.to_string();
        assert!(text.contains("read \"a\""), "{text}");
        assert!(text.contains("the value was \"b\""), "{text}");
    }

    #[test]
    fn lost_acknowledged_write_is_rejected() {
        let h = vec![
            op(0, w("a"), 0, Some((1, Ret::Write))),
            op(1, Call::Read, 2, Some((3, r(None)))),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn concurrent_write_and_read_in_either_order_are_accepted() {
        // The read overlaps the write: it may see the old or the new value.
        for seen in [None, Some("a")] {
            let h = vec![
                op(0, w("a"), 0, Some((10, Ret::Write))),
                op(1, Call::Read, 5, Some((6, r(seen)))),
            ];
            check(&h).unwrap_or_else(|e| panic!("read {seen:?}: {e}"));
        }
        // Two overlapping writes; later reads agree on one winner, either one.
        for winner in ["a", "b"] {
            let h = vec![
                op(0, w("a"), 0, Some((10, Ret::Write))),
                op(1, w("b"), 1, Some((9, Ret::Write))),
                op(2, Call::Read, 11, Some((12, r(Some(winner))))),
                op(3, Call::Read, 13, Some((14, r(Some(winner))))),
            ];
            check(&h).unwrap_or_else(|e| panic!("winner {winner}: {e}"));
        }
    }

    #[test]
    fn reads_that_flip_back_are_rejected() {
        // After a reader saw "b", nobody may see "a" again (no write of "a" follows).
        let h = vec![
            op(0, w("a"), 0, Some((10, Ret::Write))),
            op(1, w("b"), 1, Some((9, Ret::Write))),
            op(2, Call::Read, 11, Some((12, r(Some("b"))))),
            op(3, Call::Read, 13, Some((14, r(Some("a"))))),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn unknown_write_that_later_becomes_visible_is_accepted() {
        let h = vec![
            op(0, w("a"), 0, Some((1, Ret::Write))),
            op(1, w("b"), 2, None),
            op(2, Call::Read, 3, Some((4, r(Some("a"))))),
            op(2, Call::Read, 50, Some((51, r(Some("b"))))),
            op(2, Call::Read, 60, Some((61, r(Some("b"))))),
        ];
        check(&h).expect("an unknown write may land late");
    }

    #[test]
    fn unknown_write_never_visible_is_accepted() {
        let h = vec![
            op(0, w("a"), 0, Some((1, Ret::Write))),
            op(1, w("b"), 2, None),
            op(2, Call::Read, 30, Some((31, r(Some("a"))))),
            op(2, Call::Read, 50, Some((51, r(Some("a"))))),
        ];
        check(&h).expect("an unknown write may never happen");
    }

    #[test]
    fn unknown_write_cannot_take_effect_before_its_invocation() {
        let h = vec![
            op(2, Call::Read, 0, Some((1, r(Some("b"))))),
            op(1, w("b"), 2, None),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn unknown_cas_applies_only_where_its_expectation_holds() {
        let cas = |e: Option<&str>, n: &str| Call::Cas {
            expected: e.map(str::to_string),
            new: n.into(),
        };
        // Applied after the write of "a": visible.
        let ok = vec![
            op(0, w("a"), 0, Some((1, Ret::Write))),
            op(1, cas(Some("a"), "b"), 2, None),
            op(2, Call::Read, 10, Some((11, r(Some("b"))))),
        ];
        check(&ok).expect("unknown cas that applied");
        // Its expectation never held: its value can never be seen.
        let bad = vec![
            op(0, w("a"), 0, Some((1, Ret::Write))),
            op(1, cas(Some("x"), "b"), 2, None),
            op(2, Call::Read, 10, Some((11, r(Some("b"))))),
        ];
        assert!(check(&bad).is_err());
    }

    #[test]
    fn failed_operations_and_unknown_reads_are_ignored() {
        let h = vec![
            op(0, w("a"), 0, Some((1, Ret::Write))),
            Op {
                outcome: Outcome::Failed,
                ..op(1, w("zzz"), 2, None)
            },
            op(1, Call::Read, 3, None),
            op(2, Call::Read, 5, Some((6, r(Some("a"))))),
        ];
        let s = check(&h).expect("linearizable");
        assert_eq!(s.ops, 2);
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut h = vec![
            op(0, w("a"), 0, Some((1, Ret::Write))),
            op(1, Call::Read, 2, Some((3, r(Some("a"))))),
        ];
        h.push(Op {
            key: "other".into(),
            ..op(1, Call::Read, 4, Some((5, r(Some("a")))))
        });
        let err = check(&h).expect_err("\"other\" was never written");
        assert_eq!(err.key, "other");
    }

    #[test]
    fn recorder_builds_a_history() {
        let rec = Recorder::new();
        let a = rec.invoke(0, "k", w("a"));
        rec.complete(a, Completion::Ok(Ret::Write));
        let b = rec.invoke(1, "k", w("b"));
        let _ = b; // never completed: unknown
        let c = rec.invoke(2, "k", Call::Read);
        rec.complete(c, Completion::Ok(r(Some("a"))));
        let h = rec.history();
        assert_eq!(h[1].outcome, Outcome::Unknown);
        check(&h).expect("linearizable");
    }

    /// A real register run by several clients with overlapping operations: each operation
    /// takes effect at a random instant inside its interval, outputs come from that order.
    fn random_history(ops_per_client: usize, clients: usize, seed: u64) -> Vec<Op> {
        let mut rng = seed;
        let mut next = move |n: u64| {
            // xorshift: a fixed sequence per seed, no extra dependency.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        // (linearization point, client, call, invoke, complete)
        let mut planned = Vec::new();
        for c in 0..clients {
            let mut t = next(50);
            for i in 0..ops_per_client {
                let invoke = t;
                let point = invoke + 1 + next(40);
                let complete = point + 1 + next(40);
                t = complete + 1 + next(10);
                let call = match next(4) {
                    0 => Call::Read,
                    1 => w(&format!("c{c}-{i}")),
                    2 => Call::Cas {
                        expected: Some(format!("c{}-{}", next(clients as u64), next(i as u64 + 1))),
                        new: format!("c{c}-{i}"),
                    },
                    _ => Call::Read,
                };
                planned.push((point, c, call, invoke, complete));
            }
        }
        planned.sort_by_key(|p| p.0);
        let mut value: Option<String> = None;
        planned
            .into_iter()
            .map(|(_, client, call, invoke, complete)| {
                let ret = match &call {
                    Call::Read => r(value.as_deref()),
                    Call::Write(v) => {
                        value = Some(v.clone());
                        Ret::Write
                    }
                    Call::Cas { expected, new } => {
                        let ok = value == *expected;
                        if ok {
                            value = Some(new.clone());
                        }
                        Ret::Cas(ok)
                    }
                    Call::Delete => unreachable!(),
                };
                Op {
                    client,
                    key: "k".into(),
                    call,
                    invoke: Duration::from_micros(invoke),
                    outcome: Outcome::Done {
                        at: Duration::from_micros(complete),
                        ret,
                    },
                }
            })
            .collect()
    }

    #[test]
    fn two_thousand_operations_on_one_key_check_fast() {
        let h = random_history(400, 5, 0x9e37_79b9_7f4a_7c15);
        assert_eq!(h.len(), 2000);
        let started = Instant::now();
        let s = check(&h).expect("a real register's history is linearizable");
        let took = started.elapsed();
        assert_eq!(s.max_ops_per_key, 2000);
        assert!(took < Duration::from_secs(5), "2,000 ops took {took:?}");
    }

    #[test]
    fn a_corrupted_long_history_is_rejected_fast() {
        let mut h = random_history(400, 5, 42);
        // Turn one late read into a read of a value that never existed.
        let late = h
            .iter()
            .rposition(|o| o.call == Call::Read)
            .expect("some read");
        if let Outcome::Done { at, .. } = h[late].outcome {
            h[late].outcome = Outcome::Done {
                at,
                ret: r(Some("never-written")),
            };
        }
        let started = Instant::now();
        let err = check(&h).expect_err("a read of a value never written");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("never-written"), "{err}");
    }

    /// A fault leaves hundreds of operations unknown: compare-and-sets that expected the
    /// value of their time, and unique writes nobody reads. Both a correct history and one
    /// with a stale read must be decided fast.
    fn history_with_many_unknowns(stale: bool) -> Vec<Op> {
        let mut h = random_history(300, 4, 11);
        let end = h
            .iter()
            .filter_map(|o| match o.outcome {
                Outcome::Done { at, .. } => Some(at),
                _ => None,
            })
            .max()
            .expect("some op");
        let mut last_value: Option<String> = None;
        for o in &h {
            if let (Call::Write(v), Outcome::Done { .. }) = (&o.call, &o.outcome) {
                last_value = Some(v.clone());
            }
        }
        // 300 unknown operations after everything: cas from whatever they saw, blind writes.
        let base = end + ms(1);
        for i in 0..300u64 {
            let call = if i % 2 == 0 {
                Call::Cas {
                    expected: Some(format!("c{}-{}", i % 4, i)),
                    new: format!("u-cas-{i}"),
                }
            } else {
                w(&format!("u-w-{i}"))
            };
            h.push(Op {
                client: 9,
                key: "k".into(),
                call,
                invoke: base + Duration::from_micros(i),
                outcome: Outcome::Unknown,
            });
        }
        // Readers after them see the last value (none of the unknowns took effect), then a
        // read that, if `stale`, goes back to a value overwritten long ago.
        let after = base + ms(10);
        h.push(op(8, Call::Read, 0, None));
        let last = h.len() - 1;
        h[last] = Op {
            client: 8,
            key: "k".into(),
            call: Call::Read,
            invoke: after,
            outcome: Outcome::Done {
                at: after + ms(1),
                ret: r(last_value.as_deref()),
            },
        };
        if stale {
            let old = h
                .iter()
                .find_map(|o| match &o.call {
                    Call::Write(v) if Some(v) != last_value.as_ref() => Some(v.clone()),
                    _ => None,
                })
                .expect("an older write");
            h.push(Op {
                client: 8,
                key: "k".into(),
                call: Call::Read,
                invoke: after + ms(5),
                outcome: Outcome::Done {
                    at: after + ms(6),
                    ret: r(Some(&old)),
                },
            });
        }
        h
    }

    #[test]
    fn hundreds_of_unknown_operations_check_fast() {
        let h = history_with_many_unknowns(false);
        let started = Instant::now();
        check_with_budget(&h, Duration::from_secs(5)).expect("nothing stale");
        let bad = history_with_many_unknowns(true);
        check_with_budget(&bad, Duration::from_secs(5))
            .expect_err("a stale read after hundreds of unknown operations");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn an_unknown_write_of_an_unread_value_can_explain_a_failed_cas() {
        // cas("a" -> "x") failed although "a" was the value and nothing else could have
        // changed it but an unknown write of a value nobody read: that write explains it.
        let h = vec![
            op(0, w("a"), 0, Some((1, Ret::Write))),
            op(1, w("zzz"), 2, None),
            op(
                2,
                Call::Cas {
                    expected: Some("a".into()),
                    new: "x".into(),
                },
                3,
                Some((4, Ret::Cas(false))),
            ),
        ];
        check(&h).expect("the unknown write may have landed before the cas");
        // Without that write the failed cas is impossible.
        let mut without = h.clone();
        without.remove(1);
        assert!(check(&without).is_err());
    }

    #[test]
    fn long_history_with_unknown_writes_checks_fast() {
        let mut h = random_history(300, 4, 7);
        // Forget the answers of a few writes: they stay possible, the history still checks.
        let mut forgotten = 0;
        for o in h.iter_mut() {
            if matches!(o.call, Call::Write(_)) && forgotten < 20 {
                o.outcome = Outcome::Unknown;
                forgotten += 1;
            }
        }
        let started = Instant::now();
        check(&h).expect("forgetting answers keeps a history linearizable");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
