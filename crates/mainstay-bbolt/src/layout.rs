//! Page layout shared by the writer and the reader, and the two packing
//! decisions (which entries share a leaf, which children share a branch page)
//! that both writing passes must take identically.

/// The page size of the files written here (bbolt's default on Linux).
pub const PAGE_SIZE: usize = 4096;

pub(crate) const PAGE_HEADER: usize = 16;
pub(crate) const ELEMENT: usize = 16;

pub(crate) const BRANCH_PAGE: u16 = 0x01;
pub(crate) const LEAF_PAGE: u16 = 0x02;
pub(crate) const META_PAGE: u16 = 0x04;
pub(crate) const FREELIST_PAGE: u16 = 0x10;

/// A leaf element whose value is a bucket header.
pub(crate) const BUCKET_LEAF: u32 = 0x01;

pub(crate) const MAGIC: u32 = 0xED0C_DAED;
pub(crate) const VERSION: u32 = 2;
/// Meta struct (after the page header): its bytes before the checksum.
pub(crate) const META_CHECKSUMMED: usize = 56;
/// A bucket value: root page id and sequence.
pub(crate) const BUCKET_HEADER: usize = 16;

/// Pages 0 and 1 (meta) and 2 (the empty freelist).
pub(crate) const FIRST_DATA_PAGE: u64 = 3;
pub(crate) const FREELIST_PGID: u64 = 2;

/// At most this many elements on one page (the count is a u16).
const ELEMENTS_MAX: usize = 0xFFFE;

/// FNV-1a, 64 bits: the meta page checksum.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Pages a node of `bytes` bytes takes (it overflows into contiguous pages).
pub(crate) fn pages_for(bytes: usize) -> u64 {
    bytes.div_ceil(PAGE_SIZE).max(1) as u64
}

/// Decides where leaves end: entries go into the current leaf while it stays
/// within one page; an entry larger than a page gets a leaf of its own.
#[derive(Debug, Default)]
pub(crate) struct LeafPacker {
    bytes: usize,
    count: usize,
}

impl LeafPacker {
    /// Whether the current leaf must be closed before an entry of these sizes.
    pub(crate) fn closes_before(&self, key: usize, value: usize) -> bool {
        self.count > 0
            && (self.bytes + ELEMENT + key + value > PAGE_SIZE || self.count >= ELEMENTS_MAX)
    }

    pub(crate) fn add(&mut self, key: usize, value: usize) {
        if self.count == 0 {
            self.bytes = PAGE_HEADER;
        }
        self.bytes += ELEMENT + key + value;
        self.count += 1;
    }

    /// Closes the current leaf: its size in bytes (an empty leaf when no
    /// entry was added).
    pub(crate) fn close(&mut self) -> usize {
        let bytes = if self.count == 0 {
            PAGE_HEADER
        } else {
            self.bytes
        };
        *self = LeafPacker::default();
        bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// How a bucket's branch pages are cut: `fanout` children each, every page
/// given room for the longest key of the bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BranchShape {
    pub(crate) fanout: usize,
    pub(crate) pages: u64,
}

impl BranchShape {
    pub(crate) fn for_longest_key(longest: usize) -> BranchShape {
        let per_child = ELEMENT + longest.max(1);
        let fanout = ((PAGE_SIZE - PAGE_HEADER) / per_child).clamp(2, ELEMENTS_MAX);
        BranchShape {
            fanout,
            pages: pages_for(PAGE_HEADER + fanout * per_child),
        }
    }
}

/// Builds a bucket's branch levels bottom-up as its leaves are written:
/// a branch page is emitted as soon as it has `fanout` children, right after
/// its last child. `C` is a child as the caller tracks it (its first key and
/// page id when writing; nothing when only counting).
pub(crate) struct Branches<C> {
    fanout: usize,
    levels: Vec<Vec<C>>,
}

impl<C> Branches<C> {
    pub(crate) fn new(shape: BranchShape) -> Branches<C> {
        Branches {
            fanout: shape.fanout,
            levels: Vec::new(),
        }
    }

    /// Adds a written leaf; `emit` writes a branch page over the children it
    /// is given and returns that page as a child of the level above.
    pub(crate) fn push<E>(
        &mut self,
        leaf: C,
        emit: &mut impl FnMut(Vec<C>) -> Result<C, E>,
    ) -> Result<(), E> {
        let mut child = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(child);
            if self.levels[level].len() < self.fanout {
                return Ok(());
            }
            let full = std::mem::take(&mut self.levels[level]);
            child = emit(full)?;
            level += 1;
        }
    }

    /// Emits the partly filled pages left, lowest level first, and returns
    /// the bucket's root (`None` if no leaf was ever pushed).
    pub(crate) fn finish<E>(
        mut self,
        emit: &mut impl FnMut(Vec<C>) -> Result<C, E>,
    ) -> Result<Option<C>, E> {
        let mut level = 0;
        while level < self.levels.len() {
            let children = std::mem::take(&mut self.levels[level]);
            let above_empty = self.levels[level + 1..].iter().all(Vec::is_empty);
            if above_empty && children.len() == 1 {
                return Ok(children.into_iter().next());
            }
            if !children.is_empty() {
                let branch = emit(children)?;
                if self.levels.len() == level + 1 {
                    self.levels.push(Vec::new());
                }
                self.levels[level + 1].push(branch);
            }
            level += 1;
        }
        Ok(None)
    }
}

pub(crate) fn put_u16(page: &mut [u8], at: usize, value: u16) {
    page[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u32(page: &mut [u8], at: usize, value: u32) {
    page[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u64(page: &mut [u8], at: usize, value: u64) {
    page[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Writes a page header at the start of `page`.
pub(crate) fn put_header(page: &mut [u8], id: u64, flags: u16, count: usize, pages: u64) {
    put_u64(page, 0, id);
    put_u16(page, 8, flags);
    put_u16(page, 10, count as u16);
    put_u32(page, 12, (pages - 1) as u32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_vectors() {
        for (input, hash) in [
            (&b""[..], 0xcbf2_9ce4_8422_2325),
            (b"a", 0xaf63_dc4c_8601_ec8c),
            (b"foobar", 0x8594_4171_f739_67e8),
        ] {
            assert_eq!(fnv1a64(input), hash, "{input:?}");
        }
    }

    #[test]
    fn leaves_close_before_a_page_overflows() {
        // (key, value) sizes fed in order → where a new leaf starts.
        type Case<'a> = (&'a [(usize, usize)], &'a [bool]);
        let cases: [Case<'_>; 4] = [
            (&[(17, 100), (17, 100)], &[false, false]),
            (&[(17, 4000), (17, 100)], &[false, true]),
            (&[(17, 10_000), (17, 1)], &[false, true]),
            (&[(2000, 1000), (1000, 1000)], &[false, true]),
        ];
        for (entries, closes) in cases {
            let mut packer = LeafPacker::default();
            for ((key, value), close) in entries.iter().zip(closes.iter()) {
                assert_eq!(packer.closes_before(*key, *value), *close, "{entries:?}");
                if *close {
                    packer.close();
                }
                packer.add(*key, *value);
            }
        }
    }

    #[test]
    fn branch_levels_make_one_root() {
        // leaves, fanout → branch pages emitted, root found.
        for (leaves, fanout, branches) in [
            (1usize, 4usize, 0usize),
            (2, 4, 1),
            (4, 4, 1),
            (5, 4, 3),
            (16, 4, 5),
            (17, 4, 8),
            (1000, 120, 10),
        ] {
            let shape = BranchShape { fanout, pages: 1 };
            let mut levels: Branches<usize> = Branches::new(shape);
            let mut emitted = 0;
            let mut emit = |children: Vec<usize>| -> Result<usize, ()> {
                assert!(!children.is_empty() && children.len() <= fanout);
                emitted += 1;
                Ok(1_000_000 + emitted)
            };
            for leaf in 0..leaves {
                levels.push(leaf, &mut emit).expect("push");
            }
            let root = levels.finish(&mut emit).expect("finish");
            assert!(root.is_some());
            assert_eq!(emitted, branches, "{leaves} leaves, fanout {fanout}");
        }
    }

    #[test]
    fn a_branch_page_has_room_for_its_longest_keys() {
        for longest in [1, 17, 18, 200, 5000, 40_000] {
            let shape = BranchShape::for_longest_key(longest);
            assert!(shape.fanout >= 2);
            let bytes = PAGE_HEADER + shape.fanout * (ELEMENT + longest);
            assert!(shape.pages as usize * PAGE_SIZE >= bytes, "{longest}");
        }
    }
}
