//! Real-process chaos: the built `mainstay` binary as 3 or 5 processes, one
//! network namespace each, under concurrent recording clients and watchers,
//! with kill -9 (of the leader, of any member, of all), SIGSTOP/SIGCONT and
//! nftables partitions (isolating the leader or one member, one-way cuts).
//! After healing it checks the history with `mainstay-check`
//! (linearizability, which includes every acknowledged write surviving to the
//! final reads; session guarantees) and every watcher's events against a final
//! watch from revision 1, and reports how long writes took to come back after
//! each heal. Needs root, `ip` and `nft`.
//!
//! `mainstay-chaos --binary target/debug/mainstay [--members 3] [--seconds 40]
//! [--seed 1] [--clients 8] [--keys 16] [--subnet 90] [--expect-violations]`

mod cluster;
mod net;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mainstay_check::{Input, Operation, Outcome, Output};
use mainstay_proto::etcdserverpb::kv_client::KvClient;
use mainstay_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use mainstay_proto::etcdserverpb::watch_client::WatchClient;
use mainstay_proto::etcdserverpb::{
    PutRequest, RangeRequest, StatusRequest, WatchCreateRequest, WatchProgressRequest,
    WatchRequest, watch_request,
};

use crate::cluster::{CLIENT_PORT, Cluster};
use crate::net::Net;
use crate::workload::{Draw, Records, Shared, Watched, channel, lock};

struct Args {
    binary: PathBuf,
    members: usize,
    seconds: u64,
    seed: u64,
    clients: u64,
    keys: u64,
    subnet: u8,
    expect_violations: bool,
}

fn parse() -> anyhow::Result<Args> {
    let mut args = Args {
        binary: PathBuf::new(),
        members: 3,
        seconds: 40,
        seed: 1,
        clients: 8,
        keys: 16,
        subnet: 90,
        expect_violations: false,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let mut value = || {
            given
                .next()
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--binary" => args.binary = PathBuf::from(value()?),
            "--members" => args.members = value()?.parse().context("--members")?,
            "--seconds" => args.seconds = value()?.parse().context("--seconds")?,
            "--seed" => args.seed = value()?.parse().context("--seed")?,
            "--clients" => args.clients = value()?.parse().context("--clients")?,
            "--keys" => args.keys = value()?.parse().context("--keys")?,
            "--subnet" => args.subnet = value()?.parse().context("--subnet")?,
            "--expect-violations" => args.expect_violations = true,
            other => bail!("unknown argument {other}"),
        }
    }
    if !args.binary.is_file() {
        bail!("--binary: no mainstay binary at {:?}", args.binary);
    }
    if !matches!(args.members, 3 | 5) {
        bail!("--members must be 3 or 5");
    }
    Ok(args)
}

/// The seeded fault menu.
#[derive(Clone, Copy, Debug)]
enum Fault {
    KillLeader,
    KillOne,
    KillAll,
    PauseOne,
    IsolateLeader,
    IsolateOne,
    OneWay,
}

const FAULTS: [Fault; 7] = [
    Fault::KillLeader,
    Fault::KillOne,
    Fault::KillAll,
    Fault::PauseOne,
    Fault::IsolateLeader,
    Fault::IsolateOne,
    Fault::OneWay,
];

fn url(net: &Net, i: usize) -> String {
    format!("http://{}:{CLIENT_PORT}", net.member_ip(i))
}

/// The member that says it leads, if any answers so within a second.
async fn leader(net: &Net, size: usize) -> Option<usize> {
    for i in 0..size {
        let Ok(channel) = channel(&url(net, i)) else {
            continue;
        };
        let mut client = MaintenanceClient::new(channel);
        let status = client.status(StatusRequest {});
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(1), status).await {
            let reply = reply.into_inner();
            if reply.header.is_some_and(|h| h.member_id == reply.leader) {
                return Some(i);
            }
        }
    }
    None
}

/// Time until a put succeeds through some member (bounded).
async fn write_comes_back(net: &Net, size: usize, bound: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < bound {
        if let Ok(channel) = channel(&url(net, i % size)) {
            let mut kv = KvClient::new(channel);
            let put = kv.put(PutRequest {
                key: b"probe".to_vec(),
                value: b"1".to_vec().into(),
                ..Default::default()
            });
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), put).await {
                return Some(start.elapsed());
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Every event from revision 1 up to `revision`, from one member: a watch from
/// revision 1, and progress requests until one vouches for `revision`.
async fn reference_events(url: &str, revision: i64) -> anyhow::Result<Vec<Watched>> {
    let mut client = WatchClient::new(channel(url)?);
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let create = watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
        start_revision: 1,
        ..Default::default()
    });
    let progress = || WatchRequest {
        request_union: Some(watch_request::RequestUnion::ProgressRequest(
            WatchProgressRequest {},
        )),
    };
    sender
        .send(WatchRequest {
            request_union: Some(create),
        })
        .await
        .context("reference watch")?;
    sender.send(progress()).await.context("reference watch")?;
    let requests = tokio_stream::wrappers::ReceiverStream::new(receiver);
    let mut stream = tokio::time::timeout(Duration::from_secs(10), client.watch(requests))
        .await
        .context("reference watch timed out")??
        .into_inner();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = tokio::time::timeout(left, stream.message())
            .await
            .context("reference watch stalled")??
            .context("reference watch ended")?;
        let is_progress = reply.events.is_empty() && !reply.created && !reply.canceled;
        for event in reply.events {
            if let Some(kv) = event.kv {
                let value = (event.r#type == 0).then(|| kv.value.to_vec());
                events.push((kv.mod_revision, kv.key, value));
            }
        }
        if is_progress {
            if reply.header.is_some_and(|h| h.revision >= revision) {
                return Ok(events);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            sender.send(progress()).await.context("reference watch")?;
        }
    }
}

async fn run(args: Args) -> anyhow::Result<Vec<String>> {
    let work = std::env::temp_dir().join(format!("mainstay-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&work).context("work directory")?;
    let net = Net::create(args.subnet, args.members)?;
    let mut cluster = Cluster::start(args.binary.clone(), work.clone(), &net, args.members)?;
    let size = cluster.size();
    let Some(first) = write_comes_back(&net, size, Duration::from_secs(30)).await else {
        bail!(
            "the cluster never took a write; member logs in {}",
            work.display()
        );
    };
    println!("cluster of {size} up, first write after {first:?}");

    let records: Shared = std::sync::Arc::new(std::sync::Mutex::new(Records {
        watched: vec![Vec::new(); size],
        ..Records::default()
    }));
    let start = Instant::now();
    let stop = start + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for id in 0..args.clients {
        let member = (id as usize) % size;
        tasks.push(tokio::spawn(workload::client(
            id,
            url(&net, member),
            args.keys,
            start,
            stop,
            records.clone(),
        )));
    }
    let mut watchers = Vec::new();
    for i in 0..size {
        watchers.push(tokio::spawn(workload::watcher(
            i,
            url(&net, i),
            stop + Duration::from_secs(15),
            records.clone(),
        )));
    }

    let mut draw = Draw(0x1234_5678_9abc_def1 ^ args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut comebacks = Vec::new();
    let mut faults = 0;
    while Instant::now() + Duration::from_secs(8) < stop {
        tokio::time::sleep(Duration::from_millis(1500 + draw.below(1500))).await;
        let fault = FAULTS[draw.below(FAULTS.len() as u64) as usize];
        let hold = Duration::from_millis(1000 + draw.below(2000));
        let one = draw.below(size as u64) as usize;
        let other = (one + 1 + draw.below(size as u64 - 1) as usize) % size;
        let leading = leader(&net, size).await.unwrap_or(one);
        match fault {
            Fault::KillLeader => cluster.kill(leading),
            Fault::KillOne => cluster.kill(one),
            Fault::KillAll => (0..size).for_each(|i| cluster.kill(i)),
            Fault::PauseOne => cluster.pause(one),
            Fault::IsolateLeader => net.isolate(leading)?,
            Fault::IsolateOne => net.isolate(one)?,
            Fault::OneWay => net.cut(one, other)?,
        }
        tokio::time::sleep(hold).await;
        net.heal()?;
        for i in 0..size {
            cluster.resume(i);
            cluster.restart(&net, i)?;
        }
        faults += 1;
        let back = write_comes_back(&net, size, Duration::from_secs(20)).await;
        println!(
            "fault {fault:?} (member {}, {hold:?}): writes back after {}",
            match fault {
                Fault::KillLeader | Fault::IsolateLeader => leading,
                _ => one,
            },
            back.map_or("never (20 s)".to_string(), |d| format!("{d:?}"))
        );
        comebacks.push(back);
    }
    for task in tasks {
        let _ = task.await;
    }

    // Final reads of every key through every member, after healing: every
    // acknowledged write must be there (the checker judges them with the rest).
    let Some(_) = write_comes_back(&net, size, Duration::from_secs(30)).await else {
        bail!("the cluster never took a write after healing");
    };
    for i in 0..size {
        let mut kv = KvClient::new(channel(&url(&net, i))?);
        for key in 0..args.keys {
            let key = format!("k{key}").into_bytes();
            let invoked = start.elapsed().as_micros() as u64;
            let read = kv.range(RangeRequest {
                key: key.clone(),
                ..Default::default()
            });
            let outcome = match tokio::time::timeout(Duration::from_secs(5), read).await {
                Ok(Ok(reply)) => {
                    let reply = reply.into_inner();
                    Outcome::Ok(Output::Get {
                        value: reply
                            .kvs
                            .first()
                            .map(|kv| (kv.value.to_vec(), kv.mod_revision)),
                        header_revision: reply.header.map_or(0, |h| h.revision),
                    })
                }
                _ => Outcome::Failed,
            };
            lock(&records).history.push(Operation {
                client: 900_000 + i as u64,
                input: Input::Get { key },
                invoked,
                returned: start.elapsed().as_micros() as u64,
                outcome,
            });
        }
    }
    let revision = {
        let mut kv = KvClient::new(channel(&url(&net, 0))?);
        let read = kv.range(RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            count_only: true,
            ..Default::default()
        });
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .context("final revision")??
            .into_inner()
            .header
            .map_or(0, |h| h.revision)
    };
    // Watchers get until their deadline to catch up, then the reference.
    for watcher in watchers {
        let _ = watcher.await;
    }
    let reference = reference_events(&url(&net, 0), revision).await?;

    let records = std::mem::take(&mut *lock(&records));
    let mut violations = Vec::new();
    let report = mainstay_check::check(&records.history);
    violations.extend(report.violations.iter().map(ToString::to_string));
    violations.extend(
        mainstay_check::check_sessions(&records.sessions)
            .iter()
            .map(ToString::to_string),
    );
    for (i, delivered) in records.watched.iter().enumerate() {
        let agrees =
            delivered.len() <= reference.len() && reference[..delivered.len()] == delivered[..];
        if !agrees {
            let first = delivered
                .iter()
                .zip(&reference)
                .position(|(a, b)| a != b)
                .unwrap_or(delivered.len().min(reference.len()));
            violations.push(format!(
                "watch: member c{i}'s watcher differs from the committed history at event {first}: {:?} vs {:?}",
                delivered.get(first),
                reference.get(first)
            ));
        }
    }
    let unknown = records
        .history
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Unknown))
        .count();
    let mut back: Vec<Duration> = comebacks.iter().flatten().copied().collect();
    back.sort();
    println!(
        "{} operations ({unknown} unknown), {} session answers, {} watched events on {size} watchers (reference {}), {faults} faults; writes back after heal: min {:?} median {:?} max {:?}, never {}",
        records.history.len(),
        records.sessions.len(),
        records.watched.iter().map(Vec::len).sum::<usize>(),
        reference.len(),
        back.first(),
        back.get(back.len() / 2),
        back.last(),
        comebacks.iter().filter(|b| b.is_none()).count()
    );
    if violations.is_empty() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        println!("member logs kept in {}", work.display());
    }
    Ok(violations)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let expect = args.expect_violations;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Err(error) => {
            eprintln!("error: {error:#}");
            println!("chaos: 0 passed, 1 failed");
            ExitCode::FAILURE
        }
        Ok(violations) => {
            for violation in violations.iter().take(20) {
                println!("VIOLATION {violation}");
            }
            let caught = !violations.is_empty();
            let ok = caught == expect;
            if expect {
                println!(
                    "self-test: the deliberate bug was {}caught",
                    if caught { "" } else { "NOT " }
                );
            }
            println!("chaos: {} passed, {} failed", u8::from(ok), u8::from(!ok));
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
