//! Round trips through the writer and the reader, and damage the reader finds.

use crate::{Database, Item, Plan, Planner, ReadError, WriteError, Writer};

type Bucket = (Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

/// Writes `buckets` (two passes over the same data); the file's bytes.
fn write(buckets: &[Bucket]) -> Result<Vec<u8>, WriteError> {
    let mut planner = Planner::new();
    for (name, entries) in buckets {
        planner.bucket(name);
        for (key, value) in entries {
            planner.entry(key.len(), value.len());
        }
    }
    let plan = planner.finish();
    write_planned(plan, buckets)
}

fn write_planned(plan: Plan, buckets: &[Bucket]) -> Result<Vec<u8>, WriteError> {
    let size = plan.bytes();
    let mut writer = Writer::new(plan, Vec::new())?;
    for (name, entries) in buckets {
        writer.bucket(name)?;
        for (key, value) in entries {
            writer.entry(key, value)?;
        }
    }
    let (bytes, written) = writer.finish()?;
    assert_eq!(written, size);
    assert_eq!(bytes.len() as u64, size);
    Ok(bytes)
}

fn read(bytes: Vec<u8>) -> Result<Vec<Bucket>, ReadError> {
    let db = Database::from_bytes(bytes)?;
    let mut buckets: Vec<Bucket> = Vec::new();
    db.walk(&mut |item| {
        match item {
            Item::Bucket(name) => buckets.push((name.to_vec(), Vec::new())),
            Item::Entry(key, value) => {
                if let Some((_, entries)) = buckets.last_mut() {
                    entries.push((key.to_vec(), value.to_vec()));
                }
            }
        }
        Ok(())
    })?;
    Ok(buckets)
}

/// etcd-like revision keys: 8-byte big-endian main, '_', 8-byte sub.
fn revision_key(main: u64, sub: u64) -> Vec<u8> {
    let mut key = main.to_be_bytes().to_vec();
    key.push(b'_');
    key.extend_from_slice(&sub.to_be_bytes());
    key
}

fn sample() -> Vec<Bucket> {
    let keys = (1..=5000u64)
        .map(|rev| (revision_key(rev, 0), format!("value {rev}").into_bytes()))
        .collect();
    let big = vec![
        (b"a".to_vec(), vec![7u8; 10_000]),
        (b"b".to_vec(), Vec::new()),
        (b"c".to_vec(), vec![9u8; 4090]),
        (vec![b'd'; 3000], vec![1u8; 3000]),
    ];
    vec![
        (b"alarm".to_vec(), Vec::new()),
        (b"big".to_vec(), big),
        (b"key".to_vec(), keys),
        (
            b"meta".to_vec(),
            vec![(b"consistent_index".to_vec(), 42u64.to_be_bytes().to_vec())],
        ),
    ]
}

#[test]
fn what_is_written_reads_back_the_same() {
    // Goal: buckets empty, small, with values larger than a page, and with
    // enough keys for several branch levels come back entry for entry, and
    // every page is accounted for.
    let buckets = sample();
    let bytes = write(&buckets).expect("write");
    assert_eq!(bytes.len() % 4096, 0);
    assert_eq!(read(bytes).expect("read"), buckets);
}

#[test]
fn many_small_keys_need_three_levels() {
    // 200k revision keys: 1500+ leaves, more than one level of branches.
    let keys = (1..=200_000u64)
        .map(|rev| (revision_key(rev, rev % 3), b"v".to_vec()))
        .collect();
    let buckets = vec![(b"key".to_vec(), keys)];
    let bytes = write(&buckets).expect("write");
    assert_eq!(read(bytes).expect("read"), buckets);
}

#[test]
fn data_that_differs_from_the_plan_is_refused() {
    let buckets = sample();
    let mut planner = Planner::new();
    for (name, entries) in &buckets {
        planner.bucket(name);
        for (key, value) in entries.iter().skip(1) {
            planner.entry(key.len(), value.len());
        }
    }
    let error = write_planned(planner.finish(), &buckets).expect_err("refused");
    assert!(matches!(error, WriteError::PlanMismatch(_)), "{error}");
}

#[test]
fn out_of_order_input_is_refused() {
    let unsorted_keys = vec![(
        b"key".to_vec(),
        vec![(b"b".to_vec(), Vec::new()), (b"a".to_vec(), Vec::new())],
    )];
    assert!(matches!(
        write(&unsorted_keys),
        Err(WriteError::KeyOrder(_))
    ));
    let repeated_key = vec![(
        b"key".to_vec(),
        vec![(b"a".to_vec(), Vec::new()), (b"a".to_vec(), Vec::new())],
    )];
    assert!(matches!(write(&repeated_key), Err(WriteError::KeyOrder(_))));
    let unsorted_buckets = vec![
        (b"meta".to_vec(), Vec::new()),
        (b"key".to_vec(), Vec::new()),
    ];
    assert!(matches!(
        write(&unsorted_buckets),
        Err(WriteError::BucketOrder(_))
    ));
    let empty_key = vec![(b"key".to_vec(), vec![(Vec::new(), b"v".to_vec())])];
    assert!(matches!(write(&empty_key), Err(WriteError::EmptyKey(_))));
}

#[test]
fn a_damaged_meta_page_falls_back_to_the_other() {
    // Goal: as bbolt, one bad meta page is survivable; two are not.
    let buckets = sample();
    let mut bytes = write(&buckets).expect("write");
    bytes[40] ^= 0xFF; // meta 0's root page id: its checksum no longer holds
    assert_eq!(read(bytes.clone()).expect("read"), buckets);
    bytes[4096 + 40] ^= 0xFF;
    assert!(matches!(read(bytes), Err(ReadError::NotBolt(_))));
}

#[test]
fn damage_inside_the_tree_is_found() {
    let buckets = sample();
    let clean = write(&buckets).expect("write");
    // Pages whose header says they are themselves and full leaves (of `key`),
    // and the branch page above them.
    let page = |id: usize| &clean[id * 4096..(id + 1) * 4096];
    let id_of = |p: &[u8]| u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
    let leaves: Vec<usize> = (3..clean.len() / 4096)
        .filter(|&id| {
            let p = page(id);
            id_of(p) == id as u64 && p[8] == 0x02 && u16::from_le_bytes([p[10], p[11]]) > 50
        })
        .collect();
    let branch = (3..clean.len() / 4096)
        .find(|&id| id_of(page(id)) == id as u64 && page(id)[8] == 0x01)
        .expect("a branch page");
    assert!(leaves.len() > 3);
    // Each case damages one page's header and must be reported, not misread.
    for (what, id, offset, byte) in [
        ("page id", leaves[0], 0usize, 0x55u8),
        ("page kind", leaves[1], 8, 0x00),
        ("element count", leaves[2], 10, 0xFF),
        ("overflow", branch, 12, 0x07),
    ] {
        let mut bytes = clean.clone();
        bytes[id * 4096 + offset] = byte;
        assert!(
            matches!(read(bytes), Err(ReadError::Corrupt(_))),
            "{what} damage not found"
        );
    }
    assert!(matches!(
        read(b"not a database".to_vec()),
        Err(ReadError::NotBolt(_))
    ));
}
