//! Load for `scripts/bench-zdb-replication.sh`: CLIENTS connections write N unique keys
//! (VALUE bytes each, PIPELINE requests per round trip) to a master, while a sampler reads the
//! master's and the mirror's DBSIZE every 20 ms. Prints the write rate, the mirror's lag
//! during the run (entries behind, and that divided by the write rate) and how long the
//! mirror took to hold every key after the last write was acknowledged.
//!
//! Usage: repl_load MASTER_ADDR [MIRROR_ADDR|-] N CLIENTS PIPELINE VALUE ADMIN_PW
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn con(addr: &str, pw: &str) -> redis::Connection {
    let mut c = redis::Client::open(format!("redis://{addr}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("AUTH").arg(pw).query(&mut c).unwrap();
    c
}

fn dbsize(c: &mut redis::Connection) -> u64 {
    redis::cmd("DBSIZE").query(c).unwrap()
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    assert!(
        a.len() == 8,
        "usage: repl_load MASTER MIRROR|- N CLIENTS PIPELINE VALUE ADMIN_PW"
    );
    let (master, mirror) = (a[1].clone(), (a[2] != "-").then(|| a[2].clone()));
    let n: u64 = a[3].parse().unwrap();
    let clients: u64 = a[4].parse().unwrap();
    let pipeline: u64 = a[5].parse().unwrap();
    let value = vec![b'v'; a[6].parse().unwrap()];
    let pw = a[7].clone();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = mirror.clone().map(|mirror| {
        let (done, master, pw) = (done.clone(), master.clone(), pw.clone());
        std::thread::spawn(move || {
            let (mut m, mut r) = (con(&master, &pw), con(&mirror, &pw));
            let mut behind = Vec::new();
            while !done.load(Ordering::Relaxed) {
                // Mirror first: the difference can only overstate the lag.
                let rs = dbsize(&mut r);
                let ms = dbsize(&mut m);
                behind.push(ms.saturating_sub(rs));
                std::thread::sleep(Duration::from_millis(20));
            }
            behind
        })
    });
    let t0 = Instant::now();
    let per = n / clients;
    let workers: Vec<_> = (0..clients)
        .map(|w| {
            let (master, pw, value) = (master.clone(), pw.clone(), value.clone());
            std::thread::spawn(move || {
                let mut c = con(&master, &pw);
                let mut i = w * per;
                let end = i + per;
                while i < end {
                    let mut p = redis::pipe();
                    for k in i..(i + pipeline).min(end) {
                        p.cmd("SET")
                            .arg(format!("key:{k:010}"))
                            .arg(&value[..])
                            .ignore();
                    }
                    let _: () = p.query(&mut c).unwrap();
                    i += pipeline;
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let took = t0.elapsed();
    let written = per * clients;
    let rate = written as f64 / took.as_secs_f64();
    println!(
        "wrote {written} keys of {} B in {:.2} s: {:.0} writes/s ({clients} clients, pipeline {pipeline})",
        value.len(),
        took.as_secs_f64(),
        rate
    );
    let Some(mirror) = mirror else { return };
    let acked = Instant::now();
    let mut r = con(&mirror, &pw);
    while dbsize(&mut r) < written {
        assert!(
            acked.elapsed() < Duration::from_secs(300),
            "mirror never caught up"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let catch_up = acked.elapsed();
    done.store(true, Ordering::Relaxed);
    let mut behind = sampler.unwrap().join().unwrap();
    behind.sort_unstable();
    let pct = |p: usize| behind[(behind.len() - 1) * p / 100];
    let ms = |e: u64| e as f64 / rate * 1000.0;
    println!(
        "mirror lag during the run ({} samples): median {} entries (~{:.1} ms), p99 {} (~{:.1} ms), max {} (~{:.1} ms)",
        behind.len(),
        pct(50),
        ms(pct(50)),
        pct(99),
        ms(pct(99)),
        pct(100),
        ms(pct(100))
    );
    println!(
        "mirror held every key {:.1} ms after the last write was acknowledged",
        catch_up.as_secs_f64() * 1000.0
    );
}
