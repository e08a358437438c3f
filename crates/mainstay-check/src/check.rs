//! Checking a whole history: partition by key, search each partition, check the
//! global revision order, and shrink failures to a short readable window.

use std::collections::BTreeMap;
use std::fmt;

use crate::history::{Input, Key, Operation, Outcome, Output};
use crate::model::State;
use crate::search::{
    CONFIGURATIONS_MAX, Verdict, WINDOW_CONFIGURATIONS_MAX, fast_pass_fails, search_within,
};

/// One problem found in a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// What is wrong.
    pub kind: ViolationKind,
    /// The operations that show it (a short window), in invocation order.
    pub operations: Vec<Operation>,
}

/// The kinds of violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    /// No linearization exists for the operations on these keys.
    NotLinearizable {
        /// The partition's keys.
        keys: Vec<Key>,
    },
    /// The search budget ran out (reported, never silently passed).
    Undecided {
        /// The partition's keys.
        keys: Vec<Key>,
    },
    /// Two acknowledged writes share a revision.
    DuplicateRevision(i64),
    /// A revision went backwards in real time.
    RevisionWentBackwards,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = |keys: &[Key]| {
            keys.iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &self.kind {
            ViolationKind::NotLinearizable { keys: k } => writeln!(
                f,
                "not linearizable on keys [{}]; shortest failing window:",
                keys(k)
            )?,
            ViolationKind::Undecided { keys: k } => {
                writeln!(f, "search budget exhausted on keys [{}]:", keys(k))?
            }
            ViolationKind::DuplicateRevision(r) => {
                writeln!(f, "two acknowledged writes at revision {r}:")?
            }
            ViolationKind::RevisionWentBackwards => {
                writeln!(f, "revision went backwards in real time:")?
            }
        }
        for operation in &self.operations {
            writeln!(f, "  {operation}")?;
        }
        Ok(())
    }
}

/// The result of checking a history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Operations checked (failed ones and unknown reads are dropped).
    pub operations: usize,
    /// Partitions searched.
    pub partitions: usize,
    /// Everything wrong; empty means linearizable.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Whether the history passed.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Splits operations into groups whose key sets are disjoint (union-find over
/// the keys each operation touches), each sorted by invocation.
fn partitions(operations: Vec<Operation>) -> Vec<(Vec<Key>, Vec<Operation>)> {
    let mut parent: BTreeMap<Key, Key> = BTreeMap::new();
    fn find(parent: &mut BTreeMap<Key, Key>, key: &Key) -> Key {
        let up = parent.get(key).cloned().unwrap_or_else(|| key.clone());
        if &up == key {
            return up;
        }
        let root = find(parent, &up);
        parent.insert(key.clone(), root.clone());
        root
    }
    for operation in &operations {
        let keys = operation.input.keys();
        for key in &keys {
            parent.entry(key.clone()).or_insert_with(|| key.clone());
        }
        for pair in keys.windows(2) {
            let a = find(&mut parent, &pair[0]);
            let b = find(&mut parent, &pair[1]);
            if a != b {
                parent.insert(a, b);
            }
        }
    }
    let mut groups: BTreeMap<Key, (Vec<Key>, Vec<Operation>)> = BTreeMap::new();
    let all_keys: Vec<Key> = parent.keys().cloned().collect();
    for key in all_keys {
        let root = find(&mut parent, &key);
        groups.entry(root).or_default().0.push(key);
    }
    for operation in operations {
        let Some(first) = operation.input.keys().into_iter().next() else {
            continue;
        };
        let root = find(&mut parent, &first);
        if let Some(group) = groups.get_mut(&root) {
            group.1.push(operation);
        }
    }
    let mut result: Vec<_> = groups.into_values().collect();
    for (_, operations) in &mut result {
        operations.sort_by_key(|o| (o.invoked, o.client));
    }
    result
}

/// The shortest prefix (by invocation) the fast pass already rejects, as a
/// window of its last operations. Display only: the verdict comes from `search`.
fn failing_window(operations: &[Operation]) -> Vec<Operation> {
    const WINDOW_OPERATIONS: usize = 12;
    // Binary search on the prefix length: a prefix that cannot be linearized
    // stays so when extended (for the display this is close enough), and a
    // linear scan ran hundreds of searches on a long failing history (seed 38
    // with reads that skip the barrier took minutes).
    if fast_pass_fails(operations, &State::new()) {
        let (mut passing, mut failing) = (0, operations.len());
        while failing - passing > 1 {
            let middle = passing + (failing - passing) / 2;
            if fast_pass_fails(&operations[..middle], &State::new()) {
                failing = middle;
            } else {
                passing = middle;
            }
        }
        let start = failing.saturating_sub(WINDOW_OPERATIONS);
        return operations[start..failing].to_vec();
    }
    operations
        .iter()
        .rev()
        .take(WINDOW_OPERATIONS)
        .rev()
        .cloned()
        .collect()
}

fn write_revision(operation: &Operation) -> Option<i64> {
    match &operation.outcome {
        Outcome::Ok(Output::Put { revision }) => Some(*revision),
        Outcome::Ok(Output::Delete {
            deleted: true,
            revision,
        }) => Some(*revision),
        Outcome::Ok(Output::Txn {
            succeeded: true,
            revision,
        }) if !matches!(&operation.input, Input::Txn { puts, .. } if puts.is_empty()) => {
            Some(*revision)
        }
        _ => None,
    }
}

fn observed_revision(operation: &Operation) -> Option<i64> {
    match &operation.outcome {
        Outcome::Ok(Output::Get {
            header_revision, ..
        }) => Some(*header_revision),
        Outcome::Ok(Output::Delete { revision, .. })
        | Outcome::Ok(Output::Txn { revision, .. }) => Some(*revision),
        Outcome::Ok(Output::Put { revision }) => Some(*revision),
        _ => None,
    }
}

/// Global revision rules: acknowledged writes have distinct revisions, and a
/// request invoked after another returned never sees an older revision (a write
/// gets a strictly newer one).
fn check_revisions(operations: &[Operation]) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut by_revision: BTreeMap<i64, &Operation> = BTreeMap::new();
    for operation in operations {
        if let Some(revision) = write_revision(operation)
            && let Some(other) = by_revision.insert(revision, operation)
        {
            violations.push(Violation {
                kind: ViolationKind::DuplicateRevision(revision),
                operations: vec![other.clone(), operation.clone()],
            });
        }
    }
    let mut completed: Vec<&Operation> = operations
        .iter()
        .filter(|o| observed_revision(o).is_some())
        .collect();
    completed.sort_by_key(|o| o.returned);
    let mut by_invocation: Vec<&Operation> = completed.clone();
    by_invocation.sort_by_key(|o| o.invoked);
    let mut finished = 0;
    let mut highest: Option<(i64, &Operation)> = None;
    for operation in by_invocation {
        while finished < completed.len() && completed[finished].returned < operation.invoked {
            let earlier = completed[finished];
            if let Some(revision) = observed_revision(earlier)
                && highest.is_none_or(|(h, _)| revision > h)
            {
                highest = Some((revision, earlier));
            }
            finished += 1;
        }
        let Some((floor, earlier)) = highest else {
            continue;
        };
        let Some(revision) = observed_revision(operation) else {
            continue;
        };
        let backwards = match write_revision(operation) {
            Some(written) => written <= floor,
            None => revision < floor,
        };
        if backwards {
            violations.push(Violation {
                kind: ViolationKind::RevisionWentBackwards,
                operations: vec![earlier.clone(), operation.clone()],
            });
        }
    }
    violations
}

/// Checks a history against the etcd KV model.
pub fn check(history: &[Operation]) -> Report {
    let kept: Vec<Operation> = history
        .iter()
        .filter(|o| match o.outcome {
            Outcome::Failed => false,
            Outcome::Unknown => o.input.writes(),
            Outcome::Ok(_) => true,
        })
        .cloned()
        .collect();
    let mut report = Report {
        operations: kept.len(),
        ..Report::default()
    };
    report.violations.extend(check_revisions(&kept));
    // Once the revision checks have failed the history, the search only adds
    // detail: a small budget keeps a badly broken history (thousands of stale
    // reads) from costing minutes of exhaustive search.
    let budget = if report.violations.is_empty() {
        CONFIGURATIONS_MAX
    } else {
        WINDOW_CONFIGURATIONS_MAX
    };
    for (keys, operations) in partitions(kept) {
        report.partitions += 1;
        match search_within(&operations, &State::new(), budget) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable => report.violations.push(Violation {
                kind: ViolationKind::NotLinearizable { keys },
                operations: failing_window(&operations),
            }),
            Verdict::Undecided => report.violations.push(Violation {
                kind: ViolationKind::Undecided { keys },
                operations: operations.iter().take(12).cloned().collect(),
            }),
        }
    }
    report
}
