//! Encoding and decoding the agent stream's messages, the ones every task
//! sends through a replica: `cargo bench -p gantry-proto`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gantry_proto::v1::agent_message::Msg as AgentMsg;
use gantry_proto::v1::server_message::Msg as ServerMsg;
use gantry_proto::v1::{
    AgentMessage, Assign, AttemptFinished, AttemptToken, HealthCheck, HealthReport, Heartbeat,
    JobSpec, Resources, ServerMessage,
};
use prost::Message;

fn token() -> AttemptToken {
    AttemptToken {
        job_id: "6f1c3e2a-8d4b-4f0e-9a7c-2b5d1e3f4a6b".into(),
        task: 3,
        attempt: 1,
    }
}

fn assign() -> ServerMessage {
    ServerMessage {
        msg: Some(ServerMsg::Assign(Assign {
            attempt: Some(token()),
            spec: Some(JobSpec {
                name: "train-resnet".into(),
                argv: vec!["python3".into(), "train.py".into(), "--epochs=90".into()],
                env: (0..8)
                    .map(|i| (format!("VAR_{i}"), "value".into()))
                    .collect(),
                resources: Some(Resources {
                    cpu_millis: 4000,
                    memory_mib: 16_384,
                    gpus: 1,
                }),
                max_attempts: 3,
                ..JobSpec::default()
            }),
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            gpus: vec![0],
        })),
    }
}

fn finished(tail_bytes: usize) -> AgentMessage {
    AgentMessage {
        msg: Some(AgentMsg::Finished(AttemptFinished {
            attempt: Some(token()),
            exit_code: Some(0),
            stdout_tail: "x".repeat(tail_bytes),
            stderr_tail: "y".repeat(tail_bytes / 4),
            ..AttemptFinished::default()
        })),
    }
}

fn heartbeat() -> AgentMessage {
    AgentMessage {
        msg: Some(AgentMsg::Heartbeat(Heartbeat {
            sent_at_ms: 123_456,
            health: Some(HealthReport {
                score: 100,
                healthy: true,
                checks: ["disk", "memory", "load", "latency", "runtime"]
                    .iter()
                    .map(|n| HealthCheck {
                        name: (*n).into(),
                        passed: true,
                        detail: "52.1 GiB free on /var/lib/gantry/work, need 10 GiB".into(),
                    })
                    .collect(),
                checked_at_ms: 1_764_000_000_000,
            }),
            gpus: Vec::new(),
        })),
    }
}

fn bench<M: Message + Default>(c: &mut Criterion, name: &str, msg: &M) {
    let bytes = msg.encode_to_vec();
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    let mut buf = Vec::with_capacity(bytes.len());
    g.bench_function("encode", |b| {
        b.iter(|| {
            buf.clear();
            black_box(msg).encode(&mut buf).unwrap_or_default();
            black_box(buf.len())
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| black_box(M::decode(black_box(&bytes[..]))).is_ok())
    });
    g.finish();
}

fn agent_messages(c: &mut Criterion) {
    bench(c, "assign", &assign());
    bench(c, "finished, empty output", &finished(0));
    bench(c, "finished, 16 KiB tail", &finished(16 * 1024));
    bench(c, "heartbeat with health", &heartbeat());
}

criterion_group!(benches, agent_messages);
criterion_main!(benches);
