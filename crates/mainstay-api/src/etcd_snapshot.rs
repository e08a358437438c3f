//! Maintenance.Snapshot's file: this member's state laid out as etcd's
//! backend (a bbolt file with the buckets `alarm`, `auth`, `authRoles`,
//! `authUsers`, `cluster`, `key`, `lease`, `members`, `members_removed`,
//! `meta`), so `etcdctl snapshot status|restore` and `etcdutl` take it and a
//! user can always move back to etcd. The stream ends with etcd's integrity
//! trailer: the SHA-256 of the database bytes. Facts:
//! `docs/design/etcd-snapshot-format.md`.
//!
//! The file is written in two passes over one consistent read (sizes, then
//! bytes), so memory does not grow with the database.

use mainstay_bbolt::{Sink, WriteError};
use mainstay_mvcc::{AlarmKind, Record};
use mainstay_proto::authpb;
use mainstay_proto::etcdserverpb as pb;
use mainstay_proto::mvccpb::KeyValue;
use mainstay_raft::{MemberNode, StateReader};
use mainstay_storage::StorageError;
use prost::Message;

/// The cluster version written into the file: the lowest etcd that reads it
/// without taking the cluster for a downgrade (etcd raises it on start).
const CLUSTER_VERSION: &str = "3.4.0";

/// Why a snapshot could not be produced.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// What the file says about the cluster besides the state store: its
/// members (id, description, learner).
pub(crate) struct ClusterFacts {
    pub(crate) members: Vec<(u64, MemberNode, bool)>,
}

/// etcd's 17-byte revision key: main (big endian), `_`, sub (big endian).
fn revision_key(main: i64, sub: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(18);
    key.extend_from_slice(&main.to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&sub.to_be_bytes());
    key
}

/// A `key` bucket entry for one record, `sub` its place within its revision.
fn key_entry(user_key: &[u8], sub: i64, record: Record) -> (Vec<u8>, Vec<u8>) {
    let mut key = revision_key(record.revision, sub);
    let value = match record.live {
        Some(live) => KeyValue {
            key: user_key.to_vec(),
            create_revision: live.create_revision,
            mod_revision: record.revision,
            version: live.version,
            value: match live.value {
                mainstay_mvcc::Value::Inline(bytes) => bytes,
                mainstay_mvcc::Value::Pending(_) | mainstay_mvcc::Value::Stored => {
                    Default::default()
                }
            },
            lease: live.lease,
        },
        None => {
            // A deletion: etcd marks the revision key and keeps only the key.
            key.push(b't');
            KeyValue {
                key: user_key.to_vec(),
                ..KeyValue::default()
            }
        }
    };
    (key, value.encode_to_vec())
}

/// etcd's stored lease (`leasepb.Lease`).
#[derive(Clone, PartialEq, Message)]
struct StoredLease {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// etcd's member record (JSON in the `members` bucket).
#[derive(serde::Serialize)]
struct StoredMember<'a> {
    id: u64,
    #[serde(rename = "peerURLs")]
    peer_urls: &'a [String],
    #[serde(rename = "isLearner", skip_serializing_if = "std::ops::Not::not")]
    is_learner: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(rename = "clientURLs", skip_serializing_if = "<[String]>::is_empty")]
    client_urls: &'a [String],
}

fn alarm_type(kind: AlarmKind) -> pb::AlarmType {
    match kind {
        AlarmKind::NoSpace => pb::AlarmType::Nospace,
        AlarmKind::Corrupt => pb::AlarmType::Corrupt,
    }
}

fn permission_type(kind: mainstay_auth::PermissionKind) -> authpb::permission::Type {
    match kind {
        mainstay_auth::PermissionKind::Read => authpb::permission::Type::Read,
        mainstay_auth::PermissionKind::Write => authpb::permission::Type::Write,
        mainstay_auth::PermissionKind::ReadWrite => authpb::permission::Type::Readwrite,
    }
}

/// Entries sorted by key (bbolt keeps a bucket in byte order).
fn sorted(mut entries: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.dedup_by(|a, b| a.0 == b.0);
    entries
}

fn bucket(
    sink: &mut dyn Sink,
    name: &str,
    entries: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<(), WriteError> {
    sink.bucket(name.as_bytes())?;
    for (key, value) in sorted(entries) {
        sink.entry(&key, &value)?;
    }
    Ok(())
}

/// Feeds the state as of `read` to `sink` as etcd's buckets, in name order.
/// Run once into a `Planner` and once into a `Writer`.
pub(crate) fn feed(
    read: &StateReader,
    cluster: &ClusterFacts,
    sink: &mut dyn Sink,
) -> Result<(), SnapshotError> {
    let meta = read.meta()?;
    let auth = read.auth()?;

    let alarms = read
        .alarms()?
        .into_iter()
        .map(|alarm| {
            let member = pb::AlarmMember {
                member_id: alarm.member,
                alarm: alarm_type(alarm.kind) as i32,
            };
            (member.encode_to_vec(), Vec::new())
        })
        .collect();
    bucket(sink, "alarm", alarms)?;

    bucket(
        sink,
        "auth",
        vec![
            (b"authEnabled".to_vec(), vec![u8::from(auth.enabled())]),
            (
                b"authRevision".to_vec(),
                auth.revision().to_be_bytes().to_vec(),
            ),
        ],
    )?;
    let roles = auth
        .role_names()
        .into_iter()
        .filter_map(|name| auth.role(&name).map(|role| (name, role)))
        .map(|(name, role)| {
            let stored = authpb::Role {
                name: name.clone().into_bytes(),
                key_permission: role
                    .permissions
                    .iter()
                    .map(|p| authpb::Permission {
                        perm_type: permission_type(p.kind) as i32,
                        key: p.key.clone(),
                        range_end: p.range_end.clone(),
                    })
                    .collect(),
            };
            (name.into_bytes(), stored.encode_to_vec())
        })
        .collect();
    bucket(sink, "authRoles", roles)?;
    let users = auth
        .user_names()
        .into_iter()
        .filter_map(|name| auth.user(&name).map(|user| (name, user)))
        .map(|(name, user)| {
            let stored = authpb::User {
                name: name.clone().into_bytes(),
                password: user.password.clone().unwrap_or_default().into_bytes(),
                roles: user.roles.clone(),
                options: Some(authpb::UserAddOptions {
                    no_password: user.no_password,
                }),
            };
            (name.into_bytes(), stored.encode_to_vec())
        })
        .collect();
    bucket(sink, "authUsers", users)?;

    bucket(
        sink,
        "cluster",
        vec![(
            b"clusterVersion".to_vec(),
            CLUSTER_VERSION.as_bytes().to_vec(),
        )],
    )?;

    // The history, one revision at a time (rows come in key order within a
    // revision): etcd's `sub` is the position of a change within its
    // revision, which is `Record::sub`'s order (records stored before it was
    // kept all have 0 and keep key order), numbered 0, 1, … so the bucket's
    // keys are sorted and distinct.
    sink.bucket(b"key")?;
    let mut revision_rows: Vec<(Vec<u8>, Record)> = Vec::new();
    let flush =
        |rows: &mut Vec<(Vec<u8>, Record)>, sink: &mut dyn Sink| -> Result<(), SnapshotError> {
            rows.sort_by_key(|(_, record)| record.sub);
            for (sub, (user_key, record)) in rows.drain(..).enumerate() {
                let (key, value) = key_entry(&user_key, sub as i64, record);
                sink.entry(&key, &value)?;
            }
            Ok(())
        };
    read.visit_records::<SnapshotError>(true, &mut |user_key, record| {
        if revision_rows
            .first()
            .is_some_and(|(_, first)| first.revision != record.revision)
        {
            flush(&mut revision_rows, sink)?;
        }
        revision_rows.push((user_key.to_vec(), record));
        Ok(())
    })?;
    flush(&mut revision_rows, sink)?;

    let leases = read
        .leases()?
        .into_iter()
        .map(|lease| {
            let stored = StoredLease {
                id: lease.id,
                ttl: lease.ttl,
                remaining_ttl: 0,
            };
            (lease.id.to_be_bytes().to_vec(), stored.encode_to_vec())
        })
        .collect();
    bucket(sink, "lease", leases)?;

    let members = cluster
        .members
        .iter()
        .filter_map(|(id, node, learner)| {
            let stored = StoredMember {
                id: *id,
                peer_urls: &node.peer_urls,
                is_learner: *learner,
                name: &node.name,
                client_urls: &node.client_urls,
            };
            let json = serde_json::to_vec(&stored).ok()?;
            Some((format!("{id:x}").into_bytes(), json))
        })
        .collect();
    bucket(sink, "members", members)?;
    bucket(sink, "members_removed", Vec::new())?;

    let mut meta_entries = Vec::new();
    if let Some(applied) = meta.applied {
        meta_entries.push((
            b"consistent_index".to_vec(),
            applied.index.to_be_bytes().to_vec(),
        ));
        meta_entries.push((b"term".to_vec(), applied.term.to_be_bytes().to_vec()));
    }
    if meta.compacted > 0 {
        for name in ["finishedCompactRev", "scheduledCompactRev"] {
            meta_entries.push((name.as_bytes().to_vec(), revision_key(meta.compacted, 0)));
        }
    }
    bucket(sink, "meta", meta_entries)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_sort_as_revisions_and_mark_deletions() {
        let put = |revision| Record {
            revision,
            live: Some(mainstay_mvcc::Live {
                create_revision: 2,
                version: 1,
                value: mainstay_mvcc::Value::Inline(b"v".to_vec().into()),
                lease: 0,
            }),
            sub: 0,
        };
        let (a, _) = key_entry(b"k", 0, put(2));
        let (b, _) = key_entry(b"k", 1, put(2));
        let (c, _) = key_entry(b"k", 0, put(256));
        assert!(a < b && b < c);
        assert_eq!(a.len(), 17);
        assert_eq!(&a[..9], &[0, 0, 0, 0, 0, 0, 0, 2, b'_']);
        let (deleted, value) = key_entry(
            b"k",
            0,
            Record {
                revision: 3,
                live: None,
                sub: 0,
            },
        );
        assert_eq!(deleted.len(), 18);
        assert_eq!(deleted.last(), Some(&b't'));
        let decoded = KeyValue::decode(value.as_slice()).expect("decode");
        assert_eq!(decoded.key, b"k");
        assert_eq!(decoded.mod_revision, 0);
    }

    #[test]
    fn members_are_etcds_json() {
        let node = MemberNode {
            name: "m1".into(),
            peer_urls: vec!["http://a:2380".into()],
            client_urls: Vec::new(),
        };
        let stored = StoredMember {
            id: 1234,
            peer_urls: &node.peer_urls,
            is_learner: false,
            name: &node.name,
            client_urls: &node.client_urls,
        };
        assert_eq!(
            serde_json::to_string(&stored).expect("json"),
            r#"{"id":1234,"peerURLs":["http://a:2380"],"name":"m1"}"#
        );
    }
}

/// Bytes per message, as etcd sends them.
const CHUNK: usize = 32 * 1024;
/// Messages produced ahead of the client: the stream's memory bound.
pub(crate) const CHUNKS_AHEAD: usize = 4;

type Out = tokio::sync::mpsc::Sender<Result<pb::SnapshotResponse, tonic::Status>>;

/// The file's bytes cut into etcd's messages (`remaining_bytes` counting
/// down), hashed as they go.
struct Chunks {
    out: Out,
    header: pb::ResponseHeader,
    total: u64,
    sent: u64,
    buffer: Vec<u8>,
    digest: ring::digest::Context,
}

impl Chunks {
    fn send(&mut self, blob: Vec<u8>, remaining: u64) -> std::io::Result<()> {
        let message = pb::SnapshotResponse {
            header: Some(self.header),
            remaining_bytes: remaining,
            blob,
            // The etcd that restores it (etcd 3.6's field): the file's layout.
            version: CLUSTER_VERSION.to_string(),
        };
        self.out
            .blocking_send(Ok(message))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client gone"))
    }

    fn send_buffer(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let blob = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        self.digest.update(&blob);
        self.sent += blob.len() as u64;
        let remaining = self.total.saturating_sub(self.sent);
        self.send(blob, remaining)
    }
}

impl std::io::Write for Chunks {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buffer.len();
        let taken = bytes.len().min(room);
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() == CHUNK {
            self.send_buffer()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buffer()
    }
}

/// Produces the whole stream on the calling (blocking) thread: the database
/// in 32 KiB messages, then the SHA-256 of all of it (`remaining_bytes` 0).
/// Stops early when the client goes away.
pub(crate) fn stream(
    read: StateReader,
    cluster: ClusterFacts,
    header: pb::ResponseHeader,
    out: Out,
) {
    let produce = || -> Result<(), SnapshotError> {
        let mut planner = mainstay_bbolt::Planner::new();
        feed(&read, &cluster, &mut planner)?;
        let plan = planner.finish();
        let chunks = Chunks {
            out: out.clone(),
            header,
            total: plan.bytes(),
            sent: 0,
            buffer: Vec::with_capacity(CHUNK),
            digest: ring::digest::Context::new(&ring::digest::SHA256),
        };
        let mut writer = mainstay_bbolt::Writer::new(plan, chunks)?;
        feed(&read, &cluster, &mut writer)?;
        let (mut chunks, _) = writer.finish()?;
        let digest = chunks.digest.clone().finish();
        chunks
            .send(digest.as_ref().to_vec(), 0)
            .map_err(WriteError::Io)?;
        Ok(())
    };
    match produce() {
        Ok(()) => {}
        Err(SnapshotError::Write(WriteError::Io(error)))
            if error.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(error) => {
            tracing::warn!(%error, "snapshot failed");
            let _ = out.blocking_send(Err(tonic::Status::internal(format!("snapshot: {error}"))));
        }
    }
}

/// What a snapshot file holds besides its history and leases.
#[derive(Debug, Default)]
pub struct FileSummary {
    /// The newest revision in the `key` bucket (0 if empty).
    pub revision: i64,
    /// The revision compacted at (0 if never).
    pub compacted: i64,
    /// Users, roles and whether auth is on.
    pub auth: mainstay_auth::AuthState,
    /// Entries in the `key` bucket.
    pub history_rows: u64,
}

/// One row of a snapshot file, as Mainstay keeps it.
pub enum FileRow {
    /// A history record under its user key.
    Record(Vec<u8>, Record),
    /// A granted lease.
    Lease(mainstay_mvcc::LeaseRecord),
}

fn damaged(what: &str) -> mainstay_bbolt::ReadError {
    mainstay_bbolt::ReadError::Corrupt(format!("not an etcd snapshot: {what}"))
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Reads a snapshot file (Mainstay's or etcd's, the same layout): every
/// history record and lease to `row`, one at a time, then the rest.
pub fn read_file(
    db: &mainstay_bbolt::Database,
    row: &mut dyn FnMut(FileRow) -> Result<(), mainstay_bbolt::ReadError>,
) -> Result<FileSummary, mainstay_bbolt::ReadError> {
    use mainstay_bbolt::Item;
    let mut summary = FileSummary::default();
    let mut bucket = Vec::new();
    let (mut enabled, mut auth_revision) = (false, 1u64);
    let (mut users, mut roles) = (Vec::new(), Vec::new());
    db.walk(&mut |item| {
        let (key, value) = match item {
            Item::Bucket(name) => {
                bucket = name.to_vec();
                return Ok(());
            }
            Item::Entry(key, value) => (key, value),
        };
        match bucket.as_slice() {
            b"key" => {
                if key.len() != 17 && key.len() != 18 {
                    return Err(damaged("a revision key of the wrong length"));
                }
                let main = be_u64(key)
                    .and_then(|m| i64::try_from(m).ok())
                    .ok_or_else(|| damaged("a revision out of range"))?;
                let sub = key
                    .get(9..17)
                    .and_then(be_u64)
                    .and_then(|s| u32::try_from(s).ok())
                    .ok_or_else(|| damaged("a sub-revision out of range"))?;
                let kv = KeyValue::decode(value).map_err(|_| damaged("an undecodable key"))?;
                let live = (key.len() == 17).then_some(mainstay_mvcc::Live {
                    create_revision: kv.create_revision,
                    version: kv.version,
                    value: mainstay_mvcc::Value::Inline(kv.value),
                    lease: kv.lease,
                });
                summary.revision = summary.revision.max(main);
                summary.history_rows += 1;
                row(FileRow::Record(
                    kv.key,
                    Record {
                        revision: main,
                        live,
                        sub,
                    },
                ))?;
            }
            b"lease" => {
                let lease =
                    StoredLease::decode(value).map_err(|_| damaged("an undecodable lease"))?;
                row(FileRow::Lease(mainstay_mvcc::LeaseRecord {
                    id: lease.id,
                    ttl: lease.ttl,
                }))?;
            }
            b"meta" if key == b"finishedCompactRev" => {
                summary.compacted = be_u64(value)
                    .and_then(|m| i64::try_from(m).ok())
                    .ok_or_else(|| damaged("a compacted revision out of range"))?;
            }
            b"auth" if key == b"authEnabled" => enabled = value.first() == Some(&1),
            b"auth" if key == b"authRevision" => {
                auth_revision = be_u64(value).ok_or_else(|| damaged("a short auth revision"))?;
            }
            b"authUsers" => {
                let user =
                    authpb::User::decode(value).map_err(|_| damaged("an undecodable user"))?;
                let password = String::from_utf8(user.password)
                    .map_err(|_| damaged("a password hash that is not text"))?;
                let mut user_roles = user.roles;
                user_roles.sort();
                user_roles.dedup();
                users.push(mainstay_auth::User {
                    name: String::from_utf8_lossy(&user.name).into_owned(),
                    password: (!password.is_empty()).then_some(password),
                    no_password: user.options.is_some_and(|o| o.no_password),
                    roles: user_roles,
                });
            }
            b"authRoles" => {
                let role =
                    authpb::Role::decode(value).map_err(|_| damaged("an undecodable role"))?;
                let mut permissions = Vec::new();
                for p in role.key_permission {
                    let kind = match authpb::permission::Type::try_from(p.perm_type) {
                        Ok(authpb::permission::Type::Read) => mainstay_auth::PermissionKind::Read,
                        Ok(authpb::permission::Type::Write) => mainstay_auth::PermissionKind::Write,
                        Ok(authpb::permission::Type::Readwrite) => {
                            mainstay_auth::PermissionKind::ReadWrite
                        }
                        Err(_) => return Err(damaged("an unknown permission type")),
                    };
                    permissions.push(mainstay_auth::Permission {
                        kind,
                        key: p.key,
                        range_end: p.range_end,
                    });
                }
                permissions.sort_by(|a, b| a.key.cmp(&b.key).then(a.range_end.cmp(&b.range_end)));
                roles.push(mainstay_auth::Role {
                    name: String::from_utf8_lossy(&role.name).into_owned(),
                    permissions,
                });
            }
            // Members, the cluster version and alarms belong to the old
            // cluster; a restored one gets its own.
            _ => {}
        }
        Ok(())
    })?;
    summary.auth = mainstay_auth::AuthState::from_parts(enabled, auth_revision, users, roles);
    Ok(summary)
}
