//! Recorded client histories: what was asked, when, and what came back.

use std::fmt;

/// A key in the etcd KV model.
pub type Key = Vec<u8>;

/// A client request against the KV store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// Unconditional put.
    Put {
        /// Key written.
        key: Key,
        /// Value written.
        value: Vec<u8>,
    },
    /// Linearizable single-key read.
    Get {
        /// Key read.
        key: Key,
    },
    /// Single-key delete.
    Delete {
        /// Key deleted.
        key: Key,
    },
    /// A transaction: if every `(key, mod_revision)` guard holds (0 = absent),
    /// perform every put; otherwise nothing.
    Txn {
        /// Guards on mod revisions.
        guards: Vec<(Key, i64)>,
        /// Puts on success.
        puts: Vec<(Key, Vec<u8>)>,
    },
}

impl Input {
    /// Every key the request touches (sorted, deduplicated).
    pub fn keys(&self) -> Vec<Key> {
        let mut keys = match self {
            Input::Put { key, .. } | Input::Get { key } | Input::Delete { key } => {
                vec![key.clone()]
            }
            Input::Txn { guards, puts } => guards
                .iter()
                .map(|(k, _)| k.clone())
                .chain(puts.iter().map(|(k, _)| k.clone()))
                .collect(),
        };
        keys.sort();
        keys.dedup();
        keys
    }

    /// Whether the request may change state.
    pub fn writes(&self) -> bool {
        !matches!(self, Input::Get { .. })
    }
}

/// What a completed request answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// A put's revision.
    Put {
        /// Store revision of the write.
        revision: i64,
    },
    /// A read: the value and its mod revision (None = absent), and the header revision.
    Get {
        /// Value and mod revision, if present.
        value: Option<(Vec<u8>, i64)>,
        /// Store revision the read was served at.
        header_revision: i64,
    },
    /// A delete: whether a key was deleted, and the header revision.
    Delete {
        /// Whether something was deleted.
        deleted: bool,
        /// Store revision after the delete.
        revision: i64,
    },
    /// A transaction.
    Txn {
        /// Whether the guards held.
        succeeded: bool,
        /// Store revision after the transaction.
        revision: i64,
    },
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It completed with this answer.
    Ok(Output),
    /// It surely had no effect (e.g. refused before proposal). Dropped from checks.
    Failed,
    /// Timed out or lost: it may take effect at any point after invoke, or never.
    Unknown,
}

/// One request in a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Client that issued it (a client has at most one request in flight).
    pub client: u64,
    /// The request.
    pub input: Input,
    /// Time of invocation.
    pub invoked: u64,
    /// Time of completion; ignored for `Outcome::Unknown`.
    pub returned: u64,
    /// How it ended.
    pub outcome: Outcome,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = match self.outcome {
            Outcome::Unknown => "∞".to_string(),
            _ => self.returned.to_string(),
        };
        write!(
            f,
            "[{:>6} .. {:>6}] client {:>3} {} -> ",
            self.invoked,
            end,
            self.client,
            show_input(&self.input)
        )?;
        match &self.outcome {
            Outcome::Ok(output) => write!(f, "{}", show_output(output)),
            Outcome::Failed => write!(f, "failed"),
            Outcome::Unknown => write!(f, "unknown"),
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show_input(input: &Input) -> String {
    match input {
        Input::Put { key, value } => format!("put {}={}", text(key), text(value)),
        Input::Get { key } => format!("get {}", text(key)),
        Input::Delete { key } => format!("delete {}", text(key)),
        Input::Txn { guards, puts } => {
            let guards: Vec<String> = guards
                .iter()
                .map(|(k, m)| format!("mod({})=={m}", text(k)))
                .collect();
            let puts: Vec<String> = puts
                .iter()
                .map(|(k, v)| format!("{}={}", text(k), text(v)))
                .collect();
            format!(
                "txn if {} then put {}",
                guards.join(" && "),
                puts.join(", ")
            )
        }
    }
}

fn show_output(output: &Output) -> String {
    match output {
        Output::Put { revision } => format!("ok @{revision}"),
        Output::Get {
            value: Some((v, m)),
            header_revision,
        } => format!("{} (mod {m}) @{header_revision}", text(v)),
        Output::Get {
            value: None,
            header_revision,
        } => format!("absent @{header_revision}"),
        Output::Delete { deleted, revision } => format!("deleted={deleted} @{revision}"),
        Output::Txn {
            succeeded,
            revision,
        } => format!("succeeded={succeeded} @{revision}"),
    }
}
