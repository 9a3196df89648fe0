//! A store URL naming several servers, comma-separated, as a client of a
//! cluster gives it: herald connects to one that is up. (Each was taken as
//! one server, so such a URL never connected: found running `herald chaos
//! --server nats-cluster`.)

mod support;

use herald::{Bus, Message, Payload};
use herald_nats::{NatsConfig, NatsStore};

#[tokio::test]
async fn a_url_of_several_servers_connects_to_one_that_is_up() {
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{down}, {}", support::url());
    let prefix = format!("herald-test.t{:016x}", fastrand::u64(..));
    let store = NatsStore::open(NatsConfig::new(url).prefix(prefix))
        .await
        .expect("one of the servers is up");
    let bus = Bus::new(store);
    let seqs = bus
        .publish(Message::new("servers.up", Payload::null()))
        .await
        .unwrap();
    assert_eq!(seqs, [1]);
    bus.close().await.unwrap();
}
