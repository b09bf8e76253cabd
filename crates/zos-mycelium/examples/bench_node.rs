//! A bare overlay node for scripts/bench-mycelium.sh (the library behind `zos mycelium run`,
//! without the rest of the zos binary, so a release build takes a minute, not ten):
//! `bench_node KEYFILE [PEER …]` — TUN `my0`, TCP and QUIC on 9651, HTTP API on
//! 127.0.0.1:8989, no discovery. Run it inside a namespace.

use zos_mycelium::SecretKey;
use zos_mycelium::node::{Config, Node, parse_endpoint};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let key_path = args.next().ok_or("usage: bench_node KEYFILE [PEER …]")?;
    let key = SecretKey::load_or_generate(std::path::Path::new(&key_path))?;
    let peers = args
        .map(|p| parse_endpoint(&p))
        .collect::<Result<Vec<_>, _>>()?;
    let any = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 9651));
    let cfg = Config {
        key,
        peers,
        tcp_listen: any,
        quic_listen: Some(any),
        tun_name: Some("my0".into()),
        timer_divisor: 1,
        discovery: None,
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let node = Node::start(cfg).await?;
        zos_mycelium::api::serve(node, "127.0.0.1:8989".parse()?).await?;
        Ok(())
    })
}
