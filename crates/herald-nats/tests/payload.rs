//! A payload at herald's limit does not fit in one NATS message beside its
//! headers: it travels as a claim check and arrives whole.

mod support;

use futures_util::StreamExt;
use herald::{Bus, Message, Payload};
use herald_nats::NatsStore;

const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[tokio::test]
async fn a_payload_at_the_limit_arrives_whole_to_subscribers_and_groups() {
    // One partition: the group reads the two in `seq` order.
    let config = support::fresh_config().partitions(1);
    let bus = Bus::new(NatsStore::open(config).await.unwrap());
    let limit = bus.config().limits().payload_bytes();
    let mut plain = bus.subscribe_raw("big.blobs").ephemeral().await.unwrap();
    let mut group = bus.subscribe_raw("big.blobs").group("g").await.unwrap();
    let blob: Vec<u8> = (0..limit).map(|i| (i % 251) as u8).collect();
    let seqs = bus
        .publish([
            Message::new("big.blobs", Payload::bytes(blob.clone()))
                .content_type("application/octet-stream"),
            Message::new("big.blobs", Payload::json(&"small").unwrap()),
        ])
        .await
        .unwrap();
    assert_eq!(seqs, [1, 2]);
    for sub in [&mut plain, &mut group] {
        let big = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(big.seq(), Some(1));
        assert_eq!(big.payload().as_bytes(), &blob[..]);
        assert!(
            big.header(herald_nats::PAYLOAD_REF).is_none(),
            "the claim check is the transport's"
        );
        big.ack().await.unwrap();
        let small = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(small.decode::<String>().unwrap(), "small");
        small.ack().await.unwrap();
    }
}
