//! `Identity`: which member of which cluster a data directory belongs to
//! (`member.id`), written once when the member first starts.
//!
//! Initial members derive their ids from name and token; a member added at run time
//! gets its id from the cluster. Either way, once written the identity is what the
//! member is, whatever flags it is restarted with (etcd ignores `--initial-cluster`
//! once a data directory exists, for the same reason).

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::disk::{Disk, read_all};
use crate::error::StorageError;

const FILE: &str = "member.id";
/// Where `save` writes before renaming; never read.
const STAGED_FILE: &str = "member.id.tmp";

/// A member's permanent identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// This member's id (its Raft node id).
    pub member_id: u64,
    /// The cluster's id.
    pub cluster_id: u64,
}

impl Identity {
    /// The identity stored in `dir`, if any. A damaged file is corruption.
    pub fn load(disk: &Arc<dyn Disk>, dir: &Path) -> Result<Option<Identity>, StorageError> {
        disk.create_dir_all(dir)
            .map_err(|e| StorageError::io("create data directory", e))?;
        let path = dir.join(FILE);
        let file = disk
            .open(&path)
            .map_err(|e| StorageError::io("open member.id", e))?;
        let bytes = read_all(file.as_ref()).map_err(|e| StorageError::io("read member.id", e))?;
        if bytes.is_empty() {
            return Ok(None);
        }
        let corrupt = |reason| StorageError::Corrupt {
            path: path.display().to_string(),
            at: "offset 0".to_string(),
            reason,
        };
        let split = bytes
            .len()
            .checked_sub(4)
            .ok_or_else(|| corrupt("identity too short"))?;
        let (body, crc) = bytes.split_at(split);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return Err(corrupt("identity checksum mismatch"));
        }
        postcard::from_bytes(body)
            .map(Some)
            .map_err(|_| corrupt("undecodable identity"))
    }

    /// Writes the identity durably: a temporary file, fsynced, renamed over
    /// `member.id`, then the directory fsynced. A crash (or a failing fsync)
    /// part-way leaves either no identity or the whole of it, never a torn one
    /// that would read as corruption and keep the member down for good.
    pub fn save(&self, disk: &Arc<dyn Disk>, dir: &Path) -> Result<(), StorageError> {
        let mut bytes = postcard::to_allocvec(self).map_err(|_| StorageError::Encode)?;
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let staged = dir.join(STAGED_FILE);
        let file = disk
            .open(&staged)
            .map_err(|e| StorageError::io("open member.id.tmp", e))?;
        file.set_len(0)
            .and_then(|()| file.write_at(0, &bytes))
            .and_then(|()| file.sync())
            .map_err(|e| StorageError::io("write member.id.tmp and fsync", e))?;
        disk.rename(&staged, &dir.join(FILE))
            .and_then(|()| disk.sync_dir(dir))
            .map_err(|e| StorageError::io("rename member.id and fsync its directory", e))
    }
}
