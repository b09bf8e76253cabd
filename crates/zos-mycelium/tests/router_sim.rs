//! The router as a pure state machine in a simulated network (no I/O): a line A–B–C–D learns
//! routes on demand, re-converges after a cut and a new link, and forgets a node that leaves.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use zos_mycelium::SecretKey;
use zos_mycelium::packet::Tlv;
use zos_mycelium::router::{Lookup, Output, PeerId, Router};

struct Net {
    now: Instant,
    nodes: Vec<Option<Router>>,
    links: BTreeSet<(usize, usize)>,
    sent: usize,
}

impl Net {
    fn new(n: usize) -> Self {
        let now = Instant::now();
        let nodes = (0..n)
            .map(|i| {
                let k = SecretKey::from_bytes([i as u8 + 1; 32]);
                Some(Router::new(k, [i as u8; 6], now))
            })
            .collect();
        Net {
            now,
            nodes,
            links: BTreeSet::new(),
            sent: 0,
        }
    }

    fn r(&mut self, i: usize) -> &mut Router {
        self.nodes[i].as_mut().expect("node present")
    }

    fn addr(&mut self, i: usize) -> std::net::Ipv6Addr {
        self.r(i).public_key().address()
    }

    fn link(&mut self, a: usize, b: usize) {
        let now = self.now;
        self.links.insert((a.min(b), a.max(b)));
        self.r(a).add_peer(b as PeerId, 10, now);
        self.r(b).add_peer(a as PeerId, 10, now);
        self.deliver();
    }

    fn cut(&mut self, a: usize, b: usize) {
        let now = self.now;
        self.links.remove(&(a.min(b), a.max(b)));
        if let Some(r) = self.nodes[a].as_mut() {
            r.remove_peer(b as PeerId, now);
        }
        if let Some(r) = self.nodes[b].as_mut() {
            r.remove_peer(a as PeerId, now);
        }
        self.deliver();
    }

    /// Delivers until quiet (bounded: a storm is a failure).
    fn deliver(&mut self) {
        for _ in 0..1000 {
            let mut msgs: Vec<(usize, usize, Tlv)> = Vec::new();
            let mut kills = Vec::new();
            for i in 0..self.nodes.len() {
                let Some(r) = self.nodes[i].as_mut() else {
                    continue;
                };
                for o in r.take_outputs() {
                    match o {
                        Output::Send(p, t) => msgs.push((i, p as usize, t)),
                        Output::KillPeer(p) => kills.push((i, p as usize)),
                    }
                }
            }
            for (i, p) in kills {
                // The killer already dropped the peer; the other side sees the link close.
                self.links.remove(&(i.min(p), i.max(p)));
                let now = self.now;
                if let Some(r) = self.nodes[p].as_mut() {
                    r.remove_peer(i as PeerId, now);
                }
            }
            if msgs.is_empty() {
                return;
            }
            for (from, to, tlv) in msgs {
                if !self.links.contains(&(from.min(to), from.max(to))) {
                    continue;
                }
                self.sent += 1;
                let now = self.now;
                if let Some(r) = self.nodes[to].as_mut() {
                    r.handle(from as PeerId, tlv, now);
                }
            }
        }
        panic!("control traffic did not settle");
    }

    fn advance(&mut self, secs: u64) {
        for _ in 0..secs {
            self.now += Duration::from_secs(1);
            let now = self.now;
            for r in self.nodes.iter_mut().flatten() {
                r.tick(now);
            }
            self.deliver();
        }
    }

    /// Next hop from `from` towards node `to`, asking for a route first if unknown.
    fn next_hop(&mut self, from: usize, to: usize) -> Option<PeerId> {
        let dst = self.addr(to);
        let now = self.now;
        match self.r(from).lookup(dst, now) {
            Lookup::Route { peer, .. } => Some(peer),
            Lookup::Unknown => {
                self.r(from).request_route(dst, now);
                self.deliver();
                match self.r(from).lookup(dst, now) {
                    Lookup::Route { peer, .. } => Some(peer),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Follows next hops from `from` to `to`: the path, or None.
    fn path(&mut self, from: usize, to: usize) -> Option<Vec<usize>> {
        let mut path = vec![from];
        let mut cur = from;
        while cur != to {
            let nh = self.next_hop(cur, to)? as usize;
            if path.contains(&nh) || path.len() > 8 {
                return None;
            }
            path.push(nh);
            cur = nh;
        }
        Some(path)
    }
}

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const D: usize = 3;

fn line() -> Net {
    let mut n = Net::new(4);
    n.link(A, B);
    n.link(B, C);
    n.link(C, D);
    n.advance(25);
    n
}

#[test]
fn late_joiner_learns_far_route_on_demand() {
    // B–C–D first; A joins later, so it missed the updates pushed when B learned C and D.
    let mut n = Net::new(4);
    n.link(B, C);
    n.link(C, D);
    n.advance(25);
    n.link(A, B);
    n.advance(1);
    // On link-up a peer only gets the neighbour's own /64: A must ask for the rest.
    let subnets: Vec<_> = n.r(A).selected_routes().iter().map(|r| r.subnet).collect();
    let b_subnet = n.r(B).subnet();
    assert_eq!(
        subnets,
        vec![b_subnet],
        "A knows only B before traffic asks"
    );
    let d = n.addr(D);
    let now = n.now;
    assert!(matches!(n.r(A).lookup(d, now), Lookup::Unknown));
    assert_eq!(n.path(A, D), Some(vec![A, B, C, D]));
    // Metric: D announces 0; three links of cost ≈ link cost each.
    let d_subnet = n.r(D).subnet();
    let r = n
        .r(A)
        .selected_routes()
        .into_iter()
        .find(|r| r.subnet == d_subnet)
        .expect("route to D");
    assert!(
        r.metric.0 > 2 * 10 && !r.metric.is_infinite(),
        "{:?}",
        r.metric
    );
    // The E2E key at A for D equals D's key for A.
    let d_addr = n.addr(D);
    let a_addr = n.addr(A);
    let now = n.now;
    let Lookup::Route { secret: ka, .. } = n.r(A).lookup(d_addr, now) else {
        panic!("no route")
    };
    assert_eq!(n.path(D, A), Some(vec![D, C, B, A]));
    let (_, kd) = n.r(D).secret_for_source(a_addr).expect("D knows A");
    assert_eq!(ka.as_bytes(), kd.as_bytes());
}

#[test]
fn cut_and_new_link_reconverge() {
    let mut n = line();
    assert_eq!(n.path(A, D), Some(vec![A, B, C, D]));
    assert_eq!(n.path(D, A), Some(vec![D, C, B, A]));
    n.cut(B, C);
    // The retraction reached A: no usable route via B any more.
    let d = n.addr(D);
    let now = n.now;
    assert!(
        !matches!(n.r(A).lookup(d, now), Lookup::Route { .. }),
        "A still routes to D after the cut"
    );
    n.link(A, D);
    n.advance(2);
    assert_eq!(n.path(A, D), Some(vec![A, D]));
    assert_eq!(n.path(D, A), Some(vec![D, A]));
    // C reaches A and B through D now.
    assert_eq!(n.path(C, A), Some(vec![C, D, A]));
    assert_eq!(n.path(C, B), Some(vec![C, D, A, B]));
    assert_eq!(n.path(B, D), Some(vec![B, A, D]));
}

#[test]
fn leaving_node_routes_expire() {
    let mut n = line();
    assert_eq!(n.path(A, D), Some(vec![A, B, C, D]));
    // D vanishes without a word (kill -9, cable cut): its links stop answering Hellos.
    n.nodes[D] = None;
    n.advance(60);
    let d = n.addr_of_key(D);
    let now = n.now;
    for i in [A, B, C] {
        assert!(
            !matches!(n.r(i).lookup(d, now), Lookup::Route { .. }),
            "node {i} still routes to the departed D"
        );
    }
    // Retractions are held 6 s then dropped: the tables forget D's /64 entirely.
    n.advance(10);
    let sub = d;
    for i in [A, B, C] {
        assert!(
            n.r(i).secret_for_source(sub).is_none(),
            "node {i} kept D's entry"
        );
    }
    // And a restarted D (new router id, same key) is reachable again.
    n.nodes[D] = Some(Router::new(
        SecretKey::from_bytes([D as u8 + 1; 32]),
        [9; 6],
        n.now,
    ));
    n.link(C, D);
    n.advance(5);
    assert_eq!(n.path(A, D), Some(vec![A, B, C, D]));
}

#[test]
fn dead_peer_detected_within_timeout() {
    let mut n = Net::new(2);
    n.link(A, B);
    n.advance(30);
    assert_eq!(n.r(A).peers().len(), 1);
    // B stops processing (but the link object stays): no IHUs reach A.
    let b = n.nodes[B].take();
    n.advance(55);
    assert!(n.r(A).peers().is_empty(), "A did not drop the silent peer");
    assert!(n.sent < 200, "control traffic stays small: {}", n.sent);
    drop(b);
}

impl Net {
    fn addr_of_key(&self, i: usize) -> std::net::Ipv6Addr {
        SecretKey::from_bytes([i as u8 + 1; 32])
            .public_key()
            .address()
    }
}

#[test]
fn far_routes_are_kept_alive_by_seqno_requests() {
    // Only direct neighbours re-announce; when a far route's 1050 s hold lapses, the node asks
    // the source for a newer seqno (seqno request), the source bumps and re-announces, and the
    // route is restored everywhere: over a long quiet period A never loses D for long.
    let mut n = line();
    let d = n.addr(D);
    let mut lost = 0;
    for _ in 0..3000 {
        n.advance(1);
        let now = n.now;
        if !matches!(n.r(A).lookup(d, now), Lookup::Route { .. }) {
            lost += 1;
        }
    }
    assert!(lost <= 10, "A had no route to D for {lost} s of 3000");
}

#[test]
fn updates_for_a_foreign_subnet_or_outside_the_overlay_are_dropped() {
    use zos_mycelium::packet::{Metric, RouterId, SeqNo};
    let mut n = Net::new(3);
    n.link(A, B);
    let now = n.now;
    let victim = n.r(C).subnet();
    let liar = RouterId::new(n.r(B).public_key(), [7; 6]);
    for subnet in [
        victim,
        "2001:db8::/64".parse().expect("subnet"),
        "400::/48".parse().expect("subnet"),
    ] {
        n.r(A).handle(
            B as PeerId,
            Tlv::Update {
                flags: 0,
                interval: 30000,
                seqno: SeqNo(5),
                metric: Metric(1),
                subnet,
                router_id: liar,
            },
            now,
        );
        assert!(
            n.r(A).selected_routes().iter().all(|r| r.subnet != subnet),
            "{subnet} accepted"
        );
    }
}

#[test]
fn a_crashed_neighbour_restores_lost_routes_without_traffic() {
    // A–B–C–D with routes in use; C crashes (its links close) and restarts with a new router
    // id. B lost D's route through C; when C is linked again B asks it for the lost /64 at
    // once (a route request per lost subnet), so B routes to D again without any traffic
    // having to time out a query first, and A gets the route pushed.
    let mut n = line();
    assert_eq!(n.path(A, D), Some(vec![A, B, C, D]));
    n.cut(B, C);
    n.cut(C, D);
    n.nodes[C] = Some(Router::new(
        SecretKey::from_bytes([C as u8 + 1; 32]),
        [8; 6],
        n.now,
    ));
    let d_subnet = n.r(D).subnet();
    assert!(
        n.r(B)
            .selected_routes()
            .iter()
            .all(|r| r.subnet != d_subnet)
    );
    n.link(C, D);
    n.link(B, C);
    // No lookups, no route requests from the data path: only the link-up.
    n.advance(5);
    assert!(
        n.r(B)
            .selected_routes()
            .iter()
            .any(|r| r.subnet == d_subnet),
        "B did not get its lost route back on link-up"
    );
    assert!(
        n.r(A)
            .selected_routes()
            .iter()
            .any(|r| r.subnet == d_subnet),
        "A did not get the restored route pushed"
    );
    assert_eq!(n.path(A, D), Some(vec![A, B, C, D]));
}
