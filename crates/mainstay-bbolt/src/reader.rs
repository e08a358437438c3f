//! Reads a bbolt file page by page (no mmap, nothing held but the page being
//! read): its top-level buckets and their entries in key order, checking as
//! it goes what bbolt's own consistency check does (every page read once, in
//! range, of the right kind, keys in order; every page either reached or free).

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;

use crate::layout::{
    BRANCH_PAGE, BUCKET_HEADER, BUCKET_LEAF, ELEMENT, FREELIST_PAGE, LEAF_PAGE, MAGIC,
    META_CHECKSUMMED, META_PAGE, PAGE_HEADER, VERSION, fnv1a64,
};

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a bbolt file: {0}")]
    NotBolt(&'static str),
    #[error("damaged file: {0}")]
    Corrupt(String),
}

enum Source {
    Bytes(Vec<u8>),
    File(std::fs::File),
}

impl Source {
    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        match self {
            Source::Bytes(bytes) => {
                let start = usize::try_from(offset)
                    .map_err(|_| ReadError::Corrupt("a page beyond the file".into()))?;
                bytes
                    .get(start..start.saturating_add(len))
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| ReadError::Corrupt("a page beyond the end of the file".into()))
            }
            Source::File(file) => {
                let mut buffer = vec![0u8; len];
                file.read_exact_at(&mut buffer, offset).map_err(|error| {
                    if error.kind() == std::io::ErrorKind::UnexpectedEof {
                        ReadError::Corrupt("a page beyond the end of the file".into())
                    } else {
                        ReadError::Io(error)
                    }
                })?;
                Ok(buffer)
            }
        }
    }
}

/// An open bbolt file (read only).
pub struct Database {
    source: Source,
    page_size: usize,
    root: u64,
    freelist: u64,
    /// Pages in use: the database is `pages × page_size` bytes.
    pages: u64,
    txid: u64,
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    let mut b = [0u8; 2];
    b.copy_from_slice(&bytes[at..at + 2]);
    u16::from_le_bytes(b)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// A meta page's fields, if it is a valid one.
struct Meta {
    page_size: usize,
    root: u64,
    freelist: u64,
    pages: u64,
    txid: u64,
}

fn meta(page: &[u8]) -> Result<Meta, &'static str> {
    let m = PAGE_HEADER;
    if page.len() < m + META_CHECKSUMMED + 8 || u16_at(page, 8) & META_PAGE == 0 {
        return Err("no meta page");
    }
    if u32_at(page, m) != MAGIC {
        return Err("bad magic number");
    }
    if u32_at(page, m + 4) != VERSION {
        return Err("unsupported version");
    }
    if fnv1a64(&page[m..m + META_CHECKSUMMED]) != u64_at(page, m + META_CHECKSUMMED) {
        return Err("meta page checksum mismatch");
    }
    let page_size = u32_at(page, m + 8) as usize;
    if !(512..=1 << 20).contains(&page_size) || !page_size.is_power_of_two() {
        return Err("implausible page size");
    }
    Ok(Meta {
        page_size,
        root: u64_at(page, m + 16),
        freelist: u64_at(page, m + 32),
        pages: u64_at(page, m + 40),
        txid: u64_at(page, m + 48),
    })
}

/// A page as read: its kind, element count and bytes (overflow included).
struct Page {
    flags: u16,
    count: usize,
    bytes: Vec<u8>,
}

impl Database {
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Database, ReadError> {
        Database::open(Source::Bytes(bytes))
    }

    pub fn open_file(path: &std::path::Path) -> Result<Database, ReadError> {
        Database::open(Source::File(std::fs::File::open(path)?))
    }

    fn open(source: Source) -> Result<Database, ReadError> {
        let first = source
            .read(0, 4096)
            .map_err(|_| ReadError::NotBolt("shorter than a page"))?;
        let zero = meta(&first);
        // Meta 1 sits one page in: at the page size meta 0 names, or at any
        // page size bbolt allows when meta 0 is damaged.
        let one = match &zero {
            Ok(zero) => source
                .read(zero.page_size as u64, zero.page_size)
                .map_err(|_| "no second meta page")
                .and_then(|page| meta(&page)),
            Err(_) => (0..=10)
                .map(|shift| 1024u64 << shift)
                .find_map(|at| source.read(at, 4096).ok().and_then(|p| meta(&p).ok()))
                .ok_or("no valid meta page"),
        };
        let chosen = match (zero, one) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(reason), Err(_)) => return Err(ReadError::NotBolt(reason)),
        };
        if chosen.pages < 3 || chosen.root >= chosen.pages {
            return Err(ReadError::Corrupt(
                "the meta page names pages out of range".into(),
            ));
        }
        Ok(Database {
            source,
            page_size: chosen.page_size,
            root: chosen.root,
            freelist: chosen.freelist,
            pages: chosen.pages,
            txid: chosen.txid,
        })
    }

    /// Bytes of the database (pages in use × page size).
    pub fn size(&self) -> u64 {
        self.pages * self.page_size as u64
    }

    pub fn txid(&self) -> u64 {
        self.txid
    }

    fn page(&self, id: u64, seen: &mut BTreeSet<u64>) -> Result<Page, ReadError> {
        if id < 2 || id >= self.pages {
            return Err(ReadError::Corrupt(format!("page {id} out of range")));
        }
        let header = self
            .source
            .read(id * self.page_size as u64, self.page_size)?;
        if u64_at(&header, 0) != id {
            return Err(ReadError::Corrupt(format!("page {id} carries another id")));
        }
        let overflow = u64::from(u32_at(&header, 12));
        if id + overflow >= self.pages {
            return Err(ReadError::Corrupt(format!("page {id} overflows the file")));
        }
        for page in id..=id + overflow {
            if !seen.insert(page) {
                return Err(ReadError::Corrupt(format!("page {page} reached twice")));
            }
        }
        let bytes = if overflow == 0 {
            header
        } else {
            let len = (overflow as usize + 1) * self.page_size;
            self.source.read(id * self.page_size as u64, len)?
        };
        Ok(Page {
            flags: u16_at(&bytes, 8),
            count: usize::from(u16_at(&bytes, 10)),
            bytes,
        })
    }

    /// The free page ids the freelist names.
    fn free_pages(&self, seen: &mut BTreeSet<u64>) -> Result<Vec<u64>, ReadError> {
        if self.freelist == u64::MAX {
            return Ok(Vec::new());
        }
        let page = self.page(self.freelist, seen)?;
        if page.flags & FREELIST_PAGE == 0 {
            return Err(ReadError::Corrupt("the freelist page is not one".into()));
        }
        let (count, start) = if page.count == 0xFFFF {
            let real = usize::try_from(u64_at(&page.bytes, PAGE_HEADER))
                .map_err(|_| ReadError::Corrupt("freelist count".into()))?;
            (real, PAGE_HEADER + 8)
        } else {
            (page.count, PAGE_HEADER)
        };
        if start + count * 8 > page.bytes.len() {
            return Err(ReadError::Corrupt("the freelist overflows its page".into()));
        }
        Ok((0..count)
            .map(|i| u64_at(&page.bytes, start + i * 8))
            .collect())
    }

    /// Visits every top-level bucket (name) and its entries (key, value) in
    /// order, then checks that every page was reached once or is free.
    pub fn walk(
        &self,
        visit: &mut dyn FnMut(Item<'_>) -> Result<(), ReadError>,
    ) -> Result<(), ReadError> {
        let mut seen = BTreeSet::new();
        let mut buckets = Vec::new();
        self.walk_tree(self.root, &mut seen, &mut |flags, name, value| {
            if flags & BUCKET_LEAF == 0 {
                return Err(ReadError::Corrupt(
                    "a plain value in the root bucket".into(),
                ));
            }
            buckets.push((name.to_vec(), value.to_vec()));
            Ok(())
        })?;
        for (name, header) in &buckets {
            visit(Item::Bucket(name))?;
            if header.len() < BUCKET_HEADER {
                return Err(ReadError::Corrupt("a short bucket header".into()));
            }
            let root = u64_at(header, 0);
            let mut entry = |flags: u32, key: &[u8], value: &[u8]| {
                if flags & BUCKET_LEAF != 0 {
                    return Err(ReadError::Corrupt(
                        "a nested bucket (etcd keeps none)".into(),
                    ));
                }
                visit(Item::Entry(key, value))
            };
            if root == 0 {
                // Inline: a leaf page follows the header inside the value.
                let page = &header[BUCKET_HEADER..];
                if page.len() < PAGE_HEADER {
                    return Err(ReadError::Corrupt("a short inline bucket".into()));
                }
                let inline = Page {
                    flags: u16_at(page, 8),
                    count: usize::from(u16_at(page, 10)),
                    bytes: page.to_vec(),
                };
                let mut last = None;
                leaf_entries(&inline, &mut last, &mut entry)?;
            } else {
                self.walk_tree(root, &mut seen, &mut entry)?;
            }
        }
        for page in [0, 1] {
            seen.insert(page);
        }
        for free in self.free_pages(&mut seen)? {
            if free >= self.pages || !seen.insert(free) {
                return Err(ReadError::Corrupt(format!("free page {free} also in use")));
            }
        }
        // Without a stored freelist (bbolt's NoFreelistSync, which etcd
        // 3.4 sets) every page not reached is free by definition.
        if self.freelist != u64::MAX && seen.len() as u64 != self.pages {
            return Err(ReadError::Corrupt(format!(
                "{} of {} pages neither reached nor free",
                self.pages - seen.len() as u64,
                self.pages
            )));
        }
        Ok(())
    }

    /// Visits a B+tree's leaf entries (flags, key, value) in key order.
    fn walk_tree(
        &self,
        root: u64,
        seen: &mut BTreeSet<u64>,
        entry: &mut EntryVisitor<'_>,
    ) -> Result<(), ReadError> {
        let mut last: Option<Vec<u8>> = None;
        // Depth-first, children in order: a stack of pages still to read.
        let mut stack = vec![root];
        while let Some(id) = stack.pop() {
            let page = self.page(id, seen)?;
            if page.flags & LEAF_PAGE != 0 {
                leaf_entries(&page, &mut last, entry)?;
            } else if page.flags & BRANCH_PAGE != 0 {
                let children = branch_children(&page)?;
                stack.extend(children.into_iter().rev());
            } else {
                return Err(ReadError::Corrupt(format!(
                    "page {id} is neither a branch nor a leaf"
                )));
            }
            if stack.len() > 1 << 20 {
                return Err(ReadError::Corrupt("a tree too deep".into()));
            }
        }
        Ok(())
    }
}

/// Receives a leaf's entries: (element flags, key, value).
type EntryVisitor<'a> = dyn FnMut(u32, &[u8], &[u8]) -> Result<(), ReadError> + 'a;

/// One thing `Database::walk` visits.
pub enum Item<'a> {
    Bucket(&'a [u8]),
    Entry(&'a [u8], &'a [u8]),
}

fn element_bytes(page: &Page, element: usize, pos: usize, len: usize) -> Result<&[u8], ReadError> {
    element
        .checked_add(pos)
        .and_then(|start| page.bytes.get(start..start.checked_add(len)?))
        .ok_or_else(|| ReadError::Corrupt("an element points outside its page".into()))
}

fn leaf_entries(
    page: &Page,
    last: &mut Option<Vec<u8>>,
    entry: &mut EntryVisitor<'_>,
) -> Result<(), ReadError> {
    if PAGE_HEADER + page.count * ELEMENT > page.bytes.len() {
        return Err(ReadError::Corrupt("a leaf's elements overflow it".into()));
    }
    for i in 0..page.count {
        let element = PAGE_HEADER + i * ELEMENT;
        let flags = u32_at(&page.bytes, element);
        let pos = u32_at(&page.bytes, element + 4) as usize;
        let key_len = u32_at(&page.bytes, element + 8) as usize;
        let value_len = u32_at(&page.bytes, element + 12) as usize;
        let key = element_bytes(page, element, pos, key_len)?;
        let value = element_bytes(page, element, pos + key_len, value_len)?;
        if last.as_deref().is_some_and(|last| last >= key) {
            return Err(ReadError::Corrupt("keys out of order".into()));
        }
        *last = Some(key.to_vec());
        entry(flags, key, value)?;
    }
    Ok(())
}

fn branch_children(page: &Page) -> Result<Vec<u64>, ReadError> {
    if page.count == 0 || PAGE_HEADER + page.count * ELEMENT > page.bytes.len() {
        return Err(ReadError::Corrupt("a branch page without children".into()));
    }
    let mut children = Vec::with_capacity(page.count);
    let mut last: Option<&[u8]> = None;
    for i in 0..page.count {
        let element = PAGE_HEADER + i * ELEMENT;
        let pos = u32_at(&page.bytes, element) as usize;
        let key_len = u32_at(&page.bytes, element + 4) as usize;
        let key = element_bytes(page, element, pos, key_len)?;
        if last.is_some_and(|last| last >= key) {
            return Err(ReadError::Corrupt("branch keys out of order".into()));
        }
        last = Some(key);
        children.push(u64_at(&page.bytes, element + 8));
    }
    Ok(children)
}
