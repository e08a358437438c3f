//! `MemDisk`: an in-memory `Disk` with a crash model, for the simulator and tests.
//!
//! Each file keeps two images: what reads see now, and what has been made durable by
//! `sync`. Writes and length changes since the last sync are *pending*. A crash of a
//! directory (a member) keeps, per file, a prefix of its pending operations (chosen by
//! the caller's random source), may tear the first one it drops (a prefix of its
//! bytes lands), and loses the rest: the file is then the durable image plus what landed.
//! Dropping only a suffix models an append-ordered device; a disk that reorders
//! writes inside one unsynced batch is not modelled.
//!
//! Directory entries (creation, rename, removal) are durable at once: a simplification that
//! only helps the stores, noted in docs/simulation.md.
//!
//! Faults an operator of the simulation can add: fail every later `sync` under a
//! directory (a dying disk), make `sync` of chosen files return without making
//! anything durable (a lying disk: the ack-before-fsync self-test), and flip a bit
//! in a file's durable image (silent corruption).
//!
//! Handles opened before a crash are dead afterwards: every call on them fails, so a
//! task of the crashed incarnation that is still running cannot write into the next.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::disk::{DirLock, Disk, DiskFile};

#[derive(Clone, Debug)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

fn apply(image: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { offset, data } => {
            let start = *offset as usize;
            let end = start + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[start..end].copy_from_slice(data);
        }
        Pending::SetLen(len) => image.resize(*len as usize, 0),
    }
}

#[derive(Debug, Default)]
struct FileState {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
    /// Bumped by a crash; handles remember the generation they were opened in.
    generation: u64,
}

#[derive(Debug, Default)]
struct State {
    files: BTreeMap<PathBuf, Arc<Mutex<FileState>>>,
    dirs: BTreeSet<PathBuf>,
    locked: BTreeSet<PathBuf>,
    failing_sync: BTreeSet<PathBuf>,
    failed_syncs: BTreeMap<PathBuf, u64>,
    lying_sync: Vec<String>,
    syncs: u64,
}

/// What a crash did to one directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Pending operations that were lost.
    pub lost_ops: u64,
    /// Whether a write was torn (only part of its bytes landed).
    pub torn: bool,
}

/// The in-memory disk. Cheap to clone; clones share the files.
#[derive(Debug, Default, Clone)]
pub struct MemDisk {
    state: Arc<Mutex<State>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock is already a failed test or run; keep going
    // with the data as it stands rather than cascading.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemDisk {
    /// An empty disk.
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    /// Cuts the power of everything under `dir` without applying the crash model
    /// yet: every handle opened before is dead from now on, so what a killed
    /// process would never have done (a database flushing as it is dropped)
    /// cannot land. Follow with `crash`.
    pub fn power_off(&self, dir: &Path) {
        let state = lock(&self.state);
        for (path, file) in &state.files {
            if path.starts_with(dir) {
                lock(file).generation += 1;
            }
        }
    }

    /// Crashes everything under `dir`: pending writes are kept as a prefix of
    /// `choose(n + 1)` operations, the next one possibly torn, the rest lost.
    /// `choose(n)` must return a number in `0..n`.
    pub fn crash(&self, dir: &Path, choose: &mut dyn FnMut(u64) -> u64) -> CrashReport {
        let mut report = CrashReport::default();
        let mut state = lock(&self.state);
        state.locked.retain(|locked| !locked.starts_with(dir));
        for (path, file) in &state.files {
            if !path.starts_with(dir) {
                continue;
            }
            let mut file = lock(file);
            let pending = std::mem::take(&mut file.pending);
            let kept = choose(pending.len() as u64 + 1) as usize;
            let mut durable = std::mem::take(&mut file.durable);
            for op in &pending[..kept] {
                apply(&mut durable, op);
            }
            if let Some(Pending::Write { offset, data }) = pending.get(kept)
                && !data.is_empty()
                && choose(2) == 1
            {
                let landed = choose(data.len() as u64) as usize;
                if landed > 0 {
                    apply(
                        &mut durable,
                        &Pending::Write {
                            offset: *offset,
                            data: data[..landed].to_vec(),
                        },
                    );
                    report.torn = true;
                }
            }
            report.lost_ops += (pending.len() - kept) as u64;
            file.current = durable.clone();
            file.durable = durable;
            file.generation += 1;
        }
        report
    }

    /// Flips one bit of the durable image of `path` at a position chosen by
    /// `choose`. Returns the byte offset, or `None` if the file is empty or absent.
    pub fn flip_bit(&self, path: &Path, choose: &mut dyn FnMut(u64) -> u64) -> Option<u64> {
        let state = lock(&self.state);
        let mut file = lock(state.files.get(path)?);
        if file.durable.is_empty() {
            return None;
        }
        let offset = choose(file.durable.len() as u64) as usize;
        let bit = 1u8 << choose(8);
        file.durable[offset] ^= bit;
        if let Some(byte) = file.current.get_mut(offset) {
            *byte ^= bit;
        }
        Some(offset as u64)
    }

    /// Makes every later `sync` of a file under `dir` fail (a dying disk).
    pub fn fail_syncs_under(&self, dir: &Path) {
        lock(&self.state).failing_sync.insert(dir.to_path_buf());
    }

    /// Makes syncs under `dir` work again (the disk was replaced).
    pub fn heal_syncs_under(&self, dir: &Path) {
        lock(&self.state).failing_sync.remove(dir);
    }

    /// The files under `dir` whose syncs failed, with how many times.
    pub fn failed_syncs_under(&self, dir: &Path) -> Vec<(PathBuf, u64)> {
        lock(&self.state)
            .failed_syncs
            .iter()
            .filter(|(path, _)| path.starts_with(dir))
            .map(|(path, count)| (path.clone(), *count))
            .collect()
    }

    /// Makes `sync` of every file whose name starts with `prefix` return success
    /// without making anything durable: a disk (or a member) that acknowledges
    /// before fsync.
    pub fn lie_on_sync_of(&self, prefix: &str) {
        lock(&self.state).lying_sync.push(prefix.to_string());
    }

    /// Removes everything under `dir` (an operator wiping a member's data).
    pub fn wipe(&self, dir: &Path) {
        let mut state = lock(&self.state);
        state.files.retain(|path, _| !path.starts_with(dir));
        state.locked.retain(|locked| !locked.starts_with(dir));
    }

    /// The paths of the files under `dir`.
    pub fn files_under(&self, dir: &Path) -> Vec<PathBuf> {
        lock(&self.state)
            .files
            .keys()
            .filter(|path| path.starts_with(dir))
            .cloned()
            .collect()
    }

    /// The durable image of `path` (what a crash now would leave).
    pub fn durable_image(&self, path: &Path) -> Option<Vec<u8>> {
        let state = lock(&self.state);
        Some(lock(state.files.get(path)?).durable.clone())
    }

    /// How many syncs were requested in total.
    pub fn syncs(&self) -> u64 {
        lock(&self.state).syncs
    }
}

impl Disk for MemDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        lock(&self.state).dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
        let mut state = lock(&self.state);
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
            && !state.dirs.iter().any(|dir| parent.starts_with(dir))
        {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no directory {}", parent.display()),
            ));
        }
        let file = state.files.entry(path.to_path_buf()).or_default().clone();
        let generation = lock(&file).generation;
        Ok(Arc::new(MemFile {
            disk: self.clone(),
            path: path.to_path_buf(),
            file,
            generation,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        let file = state.files.remove(from).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no file {}", from.display()),
            )
        })?;
        if let Some(old) = state.files.insert(to.to_path_buf(), file) {
            // Handles on the replaced file keep working on the unlinked inode, as
            // on a real filesystem, but it is no longer reachable by path.
            drop(old);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        // Handles keep working on the unlinked file, as on a real filesystem.
        lock(&self.state)
            .files
            .remove(path)
            .map(drop)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no file {}", path.display()),
                )
            })
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = lock(&self.state);
        if !state.dirs.iter().any(|known| dir.starts_with(known)) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no directory {}", dir.display()),
            ));
        }
        Ok(state
            .files
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<DirLock> {
        let mut state = lock(&self.state);
        if !state.locked.insert(dir.to_path_buf()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "data directory {} is in use by another member",
                    dir.display()
                ),
            ));
        }
        Ok(DirLock::new(Box::new(Unlock {
            disk: self.clone(),
            dir: dir.to_path_buf(),
        })))
    }
}

struct Unlock {
    disk: MemDisk,
    dir: PathBuf,
}

impl Drop for Unlock {
    fn drop(&mut self) {
        lock(&self.disk.state).locked.remove(&self.dir);
    }
}

#[derive(Debug)]
struct MemFile {
    disk: MemDisk,
    path: PathBuf,
    file: Arc<Mutex<FileState>>,
    generation: u64,
}

impl MemFile {
    fn live(&self) -> io::Result<MutexGuard<'_, FileState>> {
        let file = lock(&self.file);
        if file.generation != self.generation {
            return Err(io::Error::other(format!(
                "{} belongs to a crashed incarnation",
                self.path.display()
            )));
        }
        Ok(file)
    }
}

impl DiskFile for MemFile {
    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.live()?.current.len() as u64)
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let file = self.live()?;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let bytes = start
            .checked_add(out.len())
            .and_then(|end| file.current.get(start..end))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past end"))?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut file = self.live()?;
        let op = Pending::Write {
            offset,
            data: data.to_vec(),
        };
        apply(&mut file.current, &op);
        file.pending.push(op);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut file = self.live()?;
        let op = Pending::SetLen(len);
        apply(&mut file.current, &op);
        file.pending.push(op);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let (failing, lying) = {
            let mut state = lock(&self.disk.state);
            state.syncs += 1;
            let failing = state
                .failing_sync
                .iter()
                .any(|dir| self.path.starts_with(dir));
            if failing {
                *state.failed_syncs.entry(self.path.clone()).or_default() += 1;
            }
            let lying = self
                .path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| state.lying_sync.iter().any(|lie| name.starts_with(lie)));
            (failing, lying)
        };
        let mut file = self.live()?;
        if failing {
            return Err(io::Error::other("simulated fsync failure"));
        }
        if lying {
            return Ok(());
        }
        let pending = std::mem::take(&mut file.pending);
        for op in &pending {
            apply(&mut file.durable, op);
        }
        Ok(())
    }
}
