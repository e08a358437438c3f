//! Writes a bbolt file from top-level buckets given in name order, each with
//! its entries in key order. Pass one (`Planner`) sees the sizes; pass two
//! (`Writer`) the bytes, and refuses data that does not match the plan.
//!
//! File order: meta pages 0 and 1, the empty freelist (page 2), then each
//! bucket's leaves with its branch pages right after their last child, then
//! the root bucket's page naming every bucket.

use std::io::Write;

use crate::layout::{
    BUCKET_HEADER, BUCKET_LEAF, BranchShape, Branches, ELEMENT, FIRST_DATA_PAGE, FREELIST_PAGE,
    FREELIST_PGID, LEAF_PAGE, LeafPacker, MAGIC, META_CHECKSUMMED, META_PAGE, PAGE_HEADER,
    PAGE_SIZE, VERSION, fnv1a64, pages_for, put_header, put_u32, put_u64,
};

/// bbolt refuses longer keys.
const KEY_MAX: usize = 32_768;
/// bbolt refuses longer values.
const VALUE_MAX: usize = (1 << 31) - 2;

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("writing the snapshot: {0}")]
    Io(#[from] std::io::Error),
    #[error("bucket {0:?} is out of order or repeated")]
    BucketOrder(String),
    #[error("keys of bucket {0:?} are out of order or repeated")]
    KeyOrder(String),
    #[error("an empty key in bucket {0:?}")]
    EmptyKey(String),
    #[error("a key of {0} bytes (bbolt takes at most 32768)")]
    KeyTooLarge(usize),
    #[error("a value of {0} bytes (bbolt takes at most 2 GiB)")]
    ValueTooLarge(usize),
    #[error("an entry outside a bucket")]
    NoBucket,
    #[error("the data changed between the two passes ({0})")]
    PlanMismatch(&'static str),
}

/// What pass one learned about a bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
struct BucketPlan {
    name: Vec<u8>,
    entries: u64,
    leaves: u64,
    leaf_pages: u64,
    longest_key: usize,
}

impl BucketPlan {
    fn shape(&self) -> BranchShape {
        BranchShape::for_longest_key(self.longest_key)
    }

    /// Pages of the bucket's branch levels.
    fn branch_pages(&self) -> u64 {
        let shape = self.shape();
        let mut levels: Branches<()> = Branches::new(shape);
        let mut branches = 0u64;
        let mut count = |_: Vec<()>| -> Result<(), std::convert::Infallible> {
            branches += 1;
            Ok(())
        };
        for _ in 0..self.leaves {
            let Ok(()) = levels.push((), &mut count);
        }
        let Ok(_) = levels.finish(&mut count);
        branches * shape.pages
    }
}

/// Pass one: the sizes of every entry, bucket by bucket.
#[derive(Debug, Default)]
pub struct Planner {
    buckets: Vec<BucketPlan>,
    packer: LeafPacker,
}

impl Planner {
    pub fn new() -> Planner {
        Planner::default()
    }

    pub fn bucket(&mut self, name: &[u8]) {
        self.close_bucket();
        self.buckets.push(BucketPlan {
            name: name.to_vec(),
            entries: 0,
            leaves: 0,
            leaf_pages: 0,
            longest_key: 0,
        });
    }

    pub fn entry(&mut self, key_len: usize, value_len: usize) {
        let Some(bucket) = self.buckets.last_mut() else {
            // The writer refuses it; the plan needs no record of it.
            return;
        };
        if self.packer.closes_before(key_len, value_len) {
            bucket.leaves += 1;
            bucket.leaf_pages += pages_for(self.packer.close());
        }
        self.packer.add(key_len, value_len);
        bucket.entries += 1;
        bucket.longest_key = bucket.longest_key.max(key_len);
    }

    fn close_bucket(&mut self) {
        if let Some(bucket) = self.buckets.last_mut()
            && (bucket.leaves == 0 || !self.packer.is_empty())
        {
            bucket.leaves += 1;
            bucket.leaf_pages += pages_for(self.packer.close());
        }
    }

    pub fn finish(mut self) -> Plan {
        self.close_bucket();
        let mut pages = FIRST_DATA_PAGE;
        for bucket in &self.buckets {
            pages += bucket.leaf_pages + bucket.branch_pages();
        }
        let root_page = pages;
        pages += pages_for(root_bytes(&self.buckets));
        Plan {
            buckets: self.buckets,
            root_page,
            pages,
        }
    }
}

/// Bytes of the root bucket's page: one element per bucket.
fn root_bytes(buckets: &[BucketPlan]) -> usize {
    PAGE_HEADER
        + buckets
            .iter()
            .map(|b| ELEMENT + b.name.len() + BUCKET_HEADER)
            .sum::<usize>()
}

/// Every page id of the file, fixed before the first byte is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    buckets: Vec<BucketPlan>,
    root_page: u64,
    pages: u64,
}

impl Plan {
    /// The size of the file in bytes.
    pub fn bytes(&self) -> u64 {
        self.pages * PAGE_SIZE as u64
    }
}

/// The page ids handed out so far, and where the pages go.
struct Pages<W> {
    out: W,
    next: u64,
}

impl<W: Write> Pages<W> {
    fn write(&mut self, page: &[u8]) -> Result<u64, WriteError> {
        let id = self.next;
        self.out.write_all(page)?;
        self.next += (page.len() / PAGE_SIZE) as u64;
        Ok(id)
    }

    /// A branch page over `children` (first key, page id), `pages` long.
    fn branch(
        &mut self,
        pages: u64,
        children: Vec<(Vec<u8>, u64)>,
    ) -> Result<(Vec<u8>, u64), WriteError> {
        let mut page = vec![0u8; pages as usize * PAGE_SIZE];
        put_header(
            &mut page,
            self.next,
            crate::layout::BRANCH_PAGE,
            children.len(),
            pages,
        );
        let mut data = PAGE_HEADER + children.len() * ELEMENT;
        for (i, (key, pgid)) in children.iter().enumerate() {
            let element = PAGE_HEADER + i * ELEMENT;
            put_u32(&mut page, element, (data - element) as u32);
            put_u32(&mut page, element + 4, key.len() as u32);
            put_u64(&mut page, element + 8, *pgid);
            page[data..data + key.len()].copy_from_slice(key);
            data += key.len();
        }
        let first = children
            .into_iter()
            .next()
            .map(|(key, _)| key)
            .unwrap_or_default();
        let id = self.write(&page)?;
        Ok((first, id))
    }
}

/// A leaf page over `entries` (flags, key, value), `bytes` long before padding.
fn leaf_page(id: u64, bytes: usize, entries: &[(u32, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let pages = pages_for(bytes);
    let mut page = vec![0u8; pages as usize * PAGE_SIZE];
    put_header(&mut page, id, LEAF_PAGE, entries.len(), pages);
    let mut data = PAGE_HEADER + entries.len() * ELEMENT;
    for (i, (flags, key, value)) in entries.iter().enumerate() {
        let element = PAGE_HEADER + i * ELEMENT;
        put_u32(&mut page, element, *flags);
        put_u32(&mut page, element + 4, (data - element) as u32);
        put_u32(&mut page, element + 8, key.len() as u32);
        put_u32(&mut page, element + 12, value.len() as u32);
        page[data..data + key.len()].copy_from_slice(key);
        data += key.len();
        page[data..data + value.len()].copy_from_slice(value);
        data += value.len();
    }
    page
}

/// A meta page naming the root page and the page count.
fn meta_page(id: u64, txid: u64, root: u64, pages: u64) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE];
    put_header(&mut page, id, META_PAGE, 0, 1);
    let meta = PAGE_HEADER;
    put_u32(&mut page, meta, MAGIC);
    put_u32(&mut page, meta + 4, VERSION);
    put_u32(&mut page, meta + 8, PAGE_SIZE as u32);
    put_u32(&mut page, meta + 12, 0);
    put_u64(&mut page, meta + 16, root);
    put_u64(&mut page, meta + 24, 0);
    put_u64(&mut page, meta + 32, FREELIST_PGID);
    put_u64(&mut page, meta + 40, pages);
    put_u64(&mut page, meta + 48, txid);
    let checksum = fnv1a64(&page[meta..meta + META_CHECKSUMMED]);
    put_u64(&mut page, meta + META_CHECKSUMMED, checksum);
    page
}

/// The bucket being written.
struct OpenBucket {
    plan: BucketPlan,
    packer: LeafPacker,
    /// The current leaf's entries: at most a page, or one larger entry.
    leaf: Vec<(u32, Vec<u8>, Vec<u8>)>,
    branches: Branches<(Vec<u8>, u64)>,
    /// The last key written (keys must increase).
    last_key: Vec<u8>,
    entries: u64,
    leaves: u64,
    leaf_pages: u64,
}

/// Pass two: the bytes, in the order the plan saw their sizes.
pub struct Writer<W> {
    plan: Plan,
    pages: Pages<W>,
    bucket: Option<OpenBucket>,
    /// Buckets done: name and root page id.
    roots: Vec<(Vec<u8>, u64)>,
}

impl<W: Write> Writer<W> {
    /// Writes the meta pages and the freelist.
    pub fn new(plan: Plan, out: W) -> Result<Writer<W>, WriteError> {
        let mut pages = Pages { out, next: 0 };
        // The newer meta (page 0) is the one a reader picks; both say the same.
        pages.write(&meta_page(0, 2, plan.root_page, plan.pages))?;
        pages.write(&meta_page(1, 1, plan.root_page, plan.pages))?;
        let mut freelist = vec![0u8; PAGE_SIZE];
        put_header(&mut freelist, FREELIST_PGID, FREELIST_PAGE, 0, 1);
        pages.write(&freelist)?;
        Ok(Writer {
            plan,
            pages,
            bucket: None,
            roots: Vec::new(),
        })
    }

    pub fn bucket(&mut self, name: &[u8]) -> Result<(), WriteError> {
        self.close_bucket()?;
        let index = self.roots.len();
        let in_order = self
            .roots
            .last()
            .is_none_or(|(last, _)| last.as_slice() < name);
        let plan = self
            .plan
            .buckets
            .get(index)
            .filter(|plan| in_order && plan.name == name)
            .cloned()
            .ok_or_else(|| WriteError::BucketOrder(String::from_utf8_lossy(name).into_owned()))?;
        self.bucket = Some(OpenBucket {
            branches: Branches::new(plan.shape()),
            plan,
            packer: LeafPacker::default(),
            leaf: Vec::new(),
            last_key: Vec::new(),
            entries: 0,
            leaves: 0,
            leaf_pages: 0,
        });
        Ok(())
    }

    pub fn entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), WriteError> {
        let Writer { pages, bucket, .. } = self;
        let bucket = bucket.as_mut().ok_or(WriteError::NoBucket)?;
        let name = || String::from_utf8_lossy(&bucket.plan.name).into_owned();
        if key.is_empty() {
            return Err(WriteError::EmptyKey(name()));
        }
        if key.len() > KEY_MAX {
            return Err(WriteError::KeyTooLarge(key.len()));
        }
        if value.len() > VALUE_MAX {
            return Err(WriteError::ValueTooLarge(value.len()));
        }
        if bucket.entries > 0 && bucket.last_key.as_slice() >= key {
            return Err(WriteError::KeyOrder(name()));
        }
        bucket.last_key.clear();
        bucket.last_key.extend_from_slice(key);
        if bucket.packer.closes_before(key.len(), value.len()) {
            flush_leaf(pages, bucket)?;
        }
        bucket.packer.add(key.len(), value.len());
        bucket.leaf.push((0, key.to_vec(), value.to_vec()));
        bucket.entries += 1;
        Ok(())
    }

    fn close_bucket(&mut self) -> Result<(), WriteError> {
        let Writer {
            pages,
            bucket,
            roots,
            ..
        } = self;
        let Some(mut open) = bucket.take() else {
            return Ok(());
        };
        if open.leaves == 0 || !open.leaf.is_empty() {
            flush_leaf(pages, &mut open)?;
        }
        let shape_pages = open.plan.shape().pages;
        let root = open
            .branches
            .finish(&mut |children| pages.branch(shape_pages, children))?
            .ok_or(WriteError::PlanMismatch("a bucket without a root"))?;
        if (open.entries, open.leaves, open.leaf_pages)
            != (open.plan.entries, open.plan.leaves, open.plan.leaf_pages)
        {
            return Err(WriteError::PlanMismatch("a bucket's entries"));
        }
        roots.push((open.plan.name, root.1));
        Ok(())
    }

    /// Writes the root bucket's page; returns the output and the bytes written.
    pub fn finish(mut self) -> Result<(W, u64), WriteError> {
        self.close_bucket()?;
        if self.roots.len() != self.plan.buckets.len() || self.pages.next != self.plan.root_page {
            return Err(WriteError::PlanMismatch("the buckets"));
        }
        let entries: Vec<(u32, Vec<u8>, Vec<u8>)> = self
            .roots
            .iter()
            .map(|(name, root)| {
                let mut header = vec![0u8; BUCKET_HEADER];
                put_u64(&mut header, 0, *root);
                (BUCKET_LEAF, name.clone(), header)
            })
            .collect();
        let page = leaf_page(self.pages.next, root_bytes(&self.plan.buckets), &entries);
        self.pages.write(&page)?;
        if self.pages.next != self.plan.pages {
            return Err(WriteError::PlanMismatch("the page count"));
        }
        self.pages.out.flush()?;
        Ok((self.pages.out, self.plan.bytes()))
    }
}

/// Writes the open bucket's current leaf and records it as a branch child.
fn flush_leaf<W: Write>(pages: &mut Pages<W>, bucket: &mut OpenBucket) -> Result<(), WriteError> {
    let bytes = bucket.packer.close();
    let leaf = std::mem::take(&mut bucket.leaf);
    let first = leaf
        .first()
        .map(|(_, key, _)| key.clone())
        .unwrap_or_default();
    let page = leaf_page(pages.next, bytes, &leaf);
    let id = pages.write(&page)?;
    bucket.leaves += 1;
    bucket.leaf_pages += pages_for(bytes);
    let shape_pages = bucket.plan.shape().pages;
    bucket.branches.push((first, id), &mut |children| {
        pages.branch(shape_pages, children)
    })
}

/// Where the two passes send the same data: `Planner` takes the sizes,
/// `Writer` the bytes. One function feeding a `Sink` runs both passes.
pub trait Sink {
    fn bucket(&mut self, name: &[u8]) -> Result<(), WriteError>;
    fn entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), WriteError>;
}

impl Sink for Planner {
    fn bucket(&mut self, name: &[u8]) -> Result<(), WriteError> {
        Planner::bucket(self, name);
        Ok(())
    }

    fn entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), WriteError> {
        Planner::entry(self, key.len(), value.len());
        Ok(())
    }
}

impl<W: Write> Sink for Writer<W> {
    fn bucket(&mut self, name: &[u8]) -> Result<(), WriteError> {
        Writer::bucket(self, name)
    }

    fn entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), WriteError> {
        Writer::entry(self, key, value)
    }
}
