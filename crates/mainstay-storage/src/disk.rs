//! `Disk`: the seam between the stores and the filesystem.
//!
//! Production uses `OsDisk` (std::fs). The simulator and the crash tests use
//! `MemDisk`, which keeps written-but-unsynced data pending so that a simulated
//! crash can lose it or tear the last write (see `mem_disk.rs`). The stores call
//! nothing but this trait, so both run the same code.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// A directory tree of files with explicit durability.
pub trait Disk: Send + Sync + fmt::Debug + 'static {
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Opens `path` for reading and writing, creating it empty if absent.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>>;
    /// Replaces `to` with `from`; durable once `sync_dir` of the parent returns.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Unlinks `path`; durable once `sync_dir` of the parent returns.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// The names of the entries directly in `dir`, whatever their type, in
    /// any order (names that are not UTF-8 are left out).
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes the directory's entries (creations, renames) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes the exclusive lock on a data directory; held until the guard drops.
    /// A second holder (another process, or a second member on the same dir) fails.
    fn lock_dir(&self, dir: &Path) -> io::Result<DirLock>;
}

/// One open file. Offsets are absolute; there is no cursor.
pub trait DiskFile: Send + Sync + fmt::Debug {
    /// Current length in bytes.
    fn byte_len(&self) -> io::Result<u64>;
    /// Fills `out` from `offset`; an error if the file is shorter.
    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()>;
    /// Writes all of `data` at `offset`, extending the file if needed.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Truncates or zero-extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes every earlier write and length change durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
}

/// Holds a data directory's lock; releases it on drop.
pub struct DirLock {
    _guard: Box<dyn Send + Sync>,
}

impl DirLock {
    pub(crate) fn new(guard: Box<dyn Send + Sync>) -> DirLock {
        DirLock { _guard: guard }
    }
}

impl fmt::Debug for DirLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DirLock")
    }
}

/// Reads a whole file.
pub(crate) fn read_all(file: &dyn DiskFile) -> io::Result<Vec<u8>> {
    let len = usize::try_from(file.byte_len()?)
        .map_err(|_| io::Error::other("file larger than the address space"))?;
    let mut bytes = vec![0; len];
    file.read_at(0, &mut bytes)?;
    Ok(bytes)
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsDisk;

#[derive(Debug)]
struct OsFile(std::fs::File);

impl Disk for OsDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(OsFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<DirLock> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("LOCK"))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock::new(Box::new(file))),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "data directory {} is in use by another member",
                    dir.display()
                ),
            )),
            Err(std::fs::TryLockError::Error(error)) => Err(error),
        }
    }
}

impl DiskFile for OsFile {
    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, out, offset)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, data, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

/// redb's storage backend over a `DiskFile`, so the state store runs on any `Disk`.
#[derive(Debug)]
pub(crate) struct RedbBackend(pub(crate) Arc<dyn DiskFile>);

impl redb::StorageBackend for RedbBackend {
    fn len(&self) -> io::Result<u64> {
        self.0.byte_len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_at(offset, data)
    }
}
