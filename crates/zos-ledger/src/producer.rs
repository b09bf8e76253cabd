//! The single block producer: one thread owns the [`Chain`] and turns queued jobs into blocks.
//!
//! Dev mode: each wake-up takes everything queued and commits it as one block right away (group
//! commit: many concurrent submissions share one fsync). Otherwise jobs are collected for
//! `block_interval` and committed together. Either way the producer also wakes every tick to run
//! billing when a contract is due. Replies are sent only after the block's store commit returned,
//! so an acknowledged transaction is durable.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tracing::{debug, error};
use zos_types::crypto::{KeyPair, PublicKey};

use crate::chain::{Chain, Produced, Reader};
use crate::error::LedgerError;
use crate::metrics::Metrics;
use crate::proof::{SignedHead, TreeSnapshot};
use crate::tx::{Call, Receipt, SignedTransaction};

/// Work for the producer.
// Jobs are moved once through a channel; boxing the transaction would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Job {
    /// Include a transaction; reply with its receipt or the rejection text.
    Submit {
        /// The transaction.
        tx: SignedTransaction,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<Receipt, String>>,
    },
    /// Dev: advance ledger time and commit a block at the new time.
    Advance {
        /// Seconds to add.
        seconds: u64,
        /// New head height.
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// Dev: transfer from the faucet.
    Fund {
        /// Receiver.
        to: PublicKey,
        /// Amount.
        amount: u64,
        /// Receipt or rejection text.
        reply: oneshot::Sender<Result<Receipt, String>>,
    },
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every sender was dropped (shutdown).
    Closed,
    /// `active` turned false: this server is no longer the producer (etcd lease lost).
    Deposed,
}

/// Jobs taken into one block at most: a block's batch must fit one etcd request (1.5 MiB by
/// default; a transfer costs about 700 bytes there). The rest waits for the next block.
pub const MAX_BLOCK_JOBS: usize = 512;

/// How often a waiting producer checks that it is still the producer: a deposed one stops
/// within this, well inside the lease margin.
const POLL: Duration = Duration::from_millis(50);

/// Runs until every sender is dropped (shutdown), `active` turns false (deposed; the jobs it
/// holds are answered with an `internal:` error the client retries elsewhere) or a commit
/// fails (returned as error).
// One call site (the server's producer thread); a parameter struct would only rename these.
#[allow(clippy::too_many_arguments)]
pub fn run(
    mut chain: Chain,
    jobs: &Receiver<Job>,
    dev: bool,
    interval: Duration,
    faucet: Option<KeyPair>,
    head: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    published: Published,
    active: &dyn Fn() -> bool,
) -> Result<Stopped, LedgerError> {
    publish(&chain, &published);
    let out = Out {
        head,
        metrics,
        published,
    };
    let tick = if dev {
        Duration::from_secs(1)
    } else {
        interval
    };
    let mut deadline = Instant::now() + tick;
    loop {
        let mut batch = Vec::new();
        let mut closed = false;
        if dev {
            // Waits a tick for the first job, looking at `active` every POLL meanwhile.
            let until = Instant::now() + tick;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                match jobs.recv_timeout(left.min(POLL)) {
                    Ok(j) => batch.push(j),
                    Err(RecvTimeoutError::Timeout) if left > POLL && active() => continue,
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => closed = true,
                }
                break;
            }
            batch.extend(jobs.try_iter().take(MAX_BLOCK_JOBS.saturating_sub(1)));
        } else {
            loop {
                let now = Instant::now();
                if now >= deadline || batch.len() >= MAX_BLOCK_JOBS || !active() {
                    break;
                }
                match jobs.recv_timeout((deadline - now).min(POLL)) {
                    Ok(j) => batch.push(j),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            deadline = Instant::now() + tick;
        }
        if !active() {
            refuse(batch);
            debug!("ledger producer: deposed, stopping");
            return Ok(Stopped::Deposed);
        }
        process(&mut chain, batch, faucet.as_ref(), &out)?;
        if closed {
            debug!("ledger producer: all senders gone, stopping");
            return Ok(Stopped::Closed);
        }
    }
}

/// Answers jobs this server can no longer include (it stopped being the producer).
pub fn refuse(jobs: impl IntoIterator<Item = Job>) {
    const WHY: &str = "internal: this server is not the block producer any more; retry";
    for j in jobs {
        match j {
            Job::Submit { reply, .. } | Job::Fund { reply, .. } => {
                let _ = reply.send(Err(WHY.into()));
            }
            Job::Advance { reply, .. } => {
                let _ = reply.send(Err(WHY.into()));
            }
        }
    }
}

type Pending = Vec<(SignedTransaction, oneshot::Sender<Result<Receipt, String>>)>;

/// Where the producer reports: the head watch (subscriptions) and the counters.
struct Out {
    head: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    published: Published,
}

/// The signed head and its state tree, for `ledger_proof` (replaced after every block).
pub(crate) type Published = Arc<std::sync::RwLock<Option<(SignedHead, Arc<TreeSnapshot>)>>>;

/// Also called by the server before it starts serving, so a proof asked for in the first
/// instants finds a head rather than racing the producer thread's start.
pub(crate) fn publish(chain: &Chain, published: &Published) {
    let b = chain.head();
    let head = SignedHead {
        header: b.header.clone(),
        hash: b.hash.clone(),
        signature: b.signature.clone().unwrap_or_default(),
    };
    let mut g = published.write().unwrap_or_else(|p| p.into_inner());
    *g = Some((head, chain.snapshot()));
}

fn process(
    chain: &mut Chain,
    batch: Vec<Job>,
    faucet: Option<&KeyPair>,
    out: &Out,
) -> Result<(), LedgerError> {
    let mut pending: Pending = Vec::new();
    for job in batch {
        match job {
            Job::Submit { tx, reply } => pending.push((tx, reply)),
            Job::Advance { seconds, reply } => {
                flush(chain, &mut pending, false, out)?;
                if let Err(reason) = chain.advance_time(seconds) {
                    let _ = reply.send(Err(reason));
                    continue;
                }
                flush(chain, &mut pending, true, out)?;
                let _ = reply.send(Ok(chain.head().header.height));
            }
            Job::Fund { to, amount, reply } => {
                flush(chain, &mut pending, false, out)?;
                let Some(key) = faucet else {
                    let _ = reply.send(Err("no faucet on this ledger".into()));
                    continue;
                };
                let nonce = Reader::new(chain.store()).account(&key.public())?.nonce;
                let call = Call::Transfer { to, amount };
                let tx = SignedTransaction::sign(key, &chain.genesis_hash(), nonce, call);
                pending.push((tx, reply));
                flush(chain, &mut pending, false, out)?;
            }
        }
    }
    // Billing runs even without transactions, so wake-ups without jobs still try a block.
    flush(chain, &mut pending, false, out)
}

fn flush(
    chain: &mut Chain,
    pending: &mut Pending,
    force: bool,
    out: &Out,
) -> Result<(), LedgerError> {
    let items = std::mem::take(pending);
    let txs: Vec<SignedTransaction> = items.iter().map(|(t, _)| t.clone()).collect();
    let now = chain.now();
    let started = Instant::now();
    match chain.produce(&txs, now, force) {
        Ok(Produced {
            block,
            results,
            events,
        }) => {
            let applied = results.iter().filter(|r| r.is_ok()).count() as u64;
            let micros = started.elapsed().as_micros() as u64;
            out.metrics.block(
                applied,
                results.len() as u64 - applied,
                events.len() as u64,
                micros,
                block.is_some(),
            );
            // Durable now: tell subscribers, then the submitters.
            if let Some(b) = &block {
                publish(chain, &out.published);
                out.head.send_replace(b.header.height);
            }
            for ((_, reply), r) in items.into_iter().zip(results) {
                let _ = reply.send(r);
            }
            Ok(())
        }
        Err(e) => {
            out.metrics.commit_failed();
            error!(error = %e, "ledger producer: block commit failed; stopping");
            for (_, reply) in items {
                let _ = reply.send(Err(format!("internal: block commit failed: {e}")));
            }
            Err(e)
        }
    }
}
