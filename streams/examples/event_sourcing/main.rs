//! A bank-account service, event-sourced on Kafka alone.
//!
//! ```text
//! HTTP POST /accounts/{id}/commands (JWT) ─► <app>-commands
//!   ─► aggregate processor (state store, expected-version check)
//!   ─► <app>-events (transactional) ─► projector: by-account view
//!        └─► <app>-by-customer-repartition ─► by-customer view
//! HTTP GET /stores/{by-account|by-customer}/{key} ◄─ local stores (or the owner's address)
//! ```
//!
//! ```text
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 cargo run -p kafka-tower-streams --example event_sourcing
//! ```
//!
//! Environment: `KAFKA_BOOTSTRAP_SERVERS` (else an in-process mock
//! cluster), `APP` (default `bank`), `ROLE` (`all` — default —,
//! `aggregates` or `projector`), `HTTP_ADDR` (default `127.0.0.1:8080`),
//! `INSTANCE` (default `0`), `PARTITIONS` (default 4), `STORE_DIR` (use
//! redb stores there), `SESSION_TIMEOUT_MS`, `PROJECTION_DELAY_MS` (a
//! pause per projected record, default 0: makes the projector easy to kill
//! mid-stream in tests).
//! It prints `ready http://<addr>` and, in the `all` role, a demo token.

mod bank;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use bank::{fold_account, fold_customer, AccountView, BankAccount, CustomerView, Event};
use kafka_tower::runtime::{Producer, ProducerConfig};
use kafka_tower::{BoxError, Consumer, OutgoingRecord};
use kafka_tower_jwt::{Algorithm, JwtLayer, VerificationKey};
use kafka_tower_streams::aggregate::{AggregateService, CommandEnvelope, EventEnvelope};
use kafka_tower_streams::partitioner::partition_for;
use kafka_tower_streams::projection::Projection;
use kafka_tower_streams::{StoreKind, Streams};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use tokio::signal::unix::{signal, SignalKind};

/// The demo's HMAC secret: a real deployment verifies its IdP's keys.
const SECRET: &[u8] = b"demo-secret-of-at-least-thirty-two-bytes!";

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

struct Topics {
    commands: String,
    events: String,
    partitions: i32,
}

async fn create_topics(bootstrap: &str, topics: &Topics) -> Result<(), BoxError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let dlq_c = format!("{}.dlq", topics.commands);
    let dlq_e = format!("{}.dlq", topics.events);
    let new = [
        NewTopic::new(
            &topics.commands,
            topics.partitions,
            TopicReplication::Fixed(1),
        ),
        NewTopic::new(
            &topics.events,
            topics.partitions,
            TopicReplication::Fixed(1),
        ),
        NewTopic::new(&dlq_c, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&dlq_e, 1, TopicReplication::Fixed(1)),
    ];
    for r in admin.create_topics(&new, &AdminOptions::new()).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(format!("cannot create {t}: {e}").into()),
        }
    }
    Ok(())
}

fn consumer(bootstrap: &str, group: &str, topics: &[&str]) -> Result<Consumer, BoxError> {
    Ok(Consumer::builder()
        .bootstrap_servers(bootstrap)
        .group_id(group)
        .topics(topics.iter().copied())
        .property("auto.offset.reset", "earliest")
        .property("session.timeout.ms", env("SESSION_TIMEOUT_MS", "10000"))
        .property("heartbeat.interval.ms", "1000")
        .build()?)
}

fn txn(bootstrap: &str, id: String) -> ProducerConfig {
    let mut p = ProducerConfig::new(bootstrap).property("transaction.timeout.ms", "10000");
    p.transactional_id = Some(id);
    p
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let app = env("APP", "bank");
    let role = env("ROLE", "all");
    let instance = env("INSTANCE", "0");
    let addr = env("HTTP_ADDR", "127.0.0.1:8080");
    let topics = Topics {
        commands: format!("{app}-commands"),
        events: format!("{app}-events"),
        partitions: env("PARTITIONS", "4").parse()?,
    };
    // librdkafka's mock cluster supports transactions but not the admin
    // API: there, every topic is created up front and `prepare` creates none.
    let mut _mock = None;
    let bootstrap = match std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
        Ok(b) => {
            create_topics(&b, &topics).await?;
            b
        }
        Err(_) => {
            let mock = MockCluster::new(1)?;
            let b = mock.bootstrap_servers();
            let n = topics.partitions;
            for (t, p) in [
                (topics.commands.clone(), n),
                (topics.events.clone(), n),
                (format!("{}.dlq", topics.commands), 1),
                (format!("{}.dlq", topics.events), 1),
                (format!("{app}-accounts-changelog"), n),
                (format!("{app}-by-account-changelog"), n),
                (format!("{app}-by-customer-changelog"), n),
                (format!("{app}-by-customer-repartition"), n),
                (format!("{app}-hosts"), 1),
            ] {
                mock.create_topic(&t, p, 1)?;
            }
            _mock = Some(mock);
            eprintln!(
                "KAFKA_BOOTSTRAP_SERVERS unset: using librdkafka's in-process mock cluster at {b}"
            );
            b
        }
    };
    let real_broker = _mock.is_none();
    let store_kind = match std::env::var("STORE_DIR") {
        Ok(dir) => StoreKind::Redb {
            dir: format!("{dir}/{instance}").into(),
        },
        Err(_) => StoreKind::InMemory,
    };

    let mut term = signal(SignalKind::terminate())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut router = Router::new();

    if role == "all" || role == "aggregates" {
        let streams = Streams::builder(&app, &bootstrap)
            .store("accounts", &topics.commands)
            .store_kind(store_kind.clone())
            .create_topics(real_broker)
            .build()?;
        streams.prepare().await?;
        let service = AggregateService::<BankAccount>::new(topics.events.as_str());
        let settings =
            streams.exactly_once(txn(&bootstrap, format!("{app}-aggregates-{instance}")));
        let consumer = consumer(
            &bootstrap,
            &format!("{app}-aggregates"),
            &[&topics.commands],
        )?;
        let stop = stopped();
        tasks.spawn(async move { streams.serve(consumer, service, settings, stop).await });

        // The command API: JWT-guarded; a command is published keyed by
        // account id to the account's partition.
        let producer = Producer::new(ProducerConfig::new(&bootstrap))?;
        let jwt = JwtLayer::builder()
            .key(VerificationKey::hmac(SECRET, Algorithm::HS256)?)
            .issuer("https://idp.example.com")
            .build()?;
        let commands = Router::new()
            .route("/accounts/{id}/commands", post(command))
            .with_state((producer, topics.commands.clone(), topics.partitions))
            .layer(jwt);
        router = router.merge(commands);
    }

    if role == "all" || role == "projector" {
        let streams = Streams::builder(&app, &bootstrap)
            .store("by-account", &topics.events)
            .store("by-customer", format!("{app}-by-customer-repartition"))
            .repartition_topic("by-customer", Some(topics.partitions))
            .advertised_host(addr.clone())
            .store_kind(store_kind)
            .create_topics(real_broker)
            .build()?;
        let repartition = streams.repartition_topic("by-customer");
        // The repartition topic must exist before `prepare` reads its
        // partition count: create it first (prepare creates the rest).
        if real_broker {
            create_repartition(&bootstrap, &repartition, topics.partitions).await?;
        }
        streams.prepare().await?;
        let by_account = Projection::new(fold_account).repartition(
            repartition.clone(),
            topics.partitions,
            |_e: &EventEnvelope<Event>, v: &AccountView| v.customer_id.clone(),
        );
        let by_customer = Projection::<EventEnvelope<Event>, CustomerView>::new(fold_customer);
        let events = topics.events.clone();
        let delay = std::time::Duration::from_millis(env("PROJECTION_DELAY_MS", "0").parse()?);
        let service = tower::service_fn(move |req: http::Request<kafka_tower::RecordBody>| {
            let mut a = by_account.clone();
            let mut c = by_customer.clone();
            let is_events = req.uri().path().trim_start_matches('/') == events;
            async move {
                use tower::Service as _;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if is_events {
                    a.call(req).await
                } else {
                    c.call(req).await
                }
            }
        });
        let settings = streams.exactly_once(txn(&bootstrap, format!("{app}-projector-{instance}")));
        let consumer = consumer(
            &bootstrap,
            &format!("{app}-projector"),
            &[&topics.events, &repartition],
        )?;
        router = router.merge(kafka_tower_streams::query::router(streams.clone()));
        let stop = stopped();
        tasks.spawn(async move { streams.serve(consumer, service, settings, stop).await });
    }

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("ready http://{}", listener.local_addr()?);
    if role == "all" {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"iss": "https://idp.example.com", "sub": "teller-1", "exp": now + 3600}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET)?,
        )?;
        println!("token {token}");
    }
    let http = axum::serve(listener, router);
    tokio::select! {
        r = http => r?,
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        Some(r) = tasks.join_next() => { r??; }
    }
    let _ = stop_tx.send(true);
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    eprintln!("event_sourcing: stopped cleanly");
    Ok(())
}

async fn create_repartition(bootstrap: &str, topic: &str, partitions: i32) -> Result<(), BoxError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(format!("cannot create {t}: {e}").into()),
        }
    }
    Ok(())
}

/// `POST /accounts/{id}/commands` with `{"expected_version":N,"command":{...}}`:
/// published to the command topic, answered `202` with where it was stored.
/// The outcome shows in the views (or, refused, in `<app>-commands.dlq`).
async fn command(
    State((producer, topic, partitions)): State<(Producer, String, i32)>,
    Path(id): Path<String>,
    Json(envelope): Json<CommandEnvelope<bank::Command>>,
) -> (StatusCode, String) {
    let payload = serde_json::to_vec(&envelope).expect("serializable");
    let record = OutgoingRecord {
        topic,
        partition: Some(partition_for(id.as_bytes(), partitions)),
        key: Some(id.into()),
        payload: Some(payload.into()),
        ..Default::default()
    };
    match producer.send(record).await {
        Ok(d) => (
            StatusCode::ACCEPTED,
            format!("{{\"partition\":{},\"offset\":{}}}", d.partition, d.offset),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
