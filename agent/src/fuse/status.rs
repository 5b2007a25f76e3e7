//! The `status/` files: what `cat mnt/cluster/info` gave sheepfs users. Each is rendered when
//! opened, from the same service calls the D-Bus API answers, so it agrees with
//! `hlfs --json volume list`; each comes as text and as JSON.

use crate::service::Service;
use serde_json::{json, Value};

/// File names under `status/`.
pub const FILES: [&str; 6] = [
    "agent",
    "agent.json",
    "pools",
    "pools.json",
    "volumes",
    "volumes.json",
];

/// The file called `name`, if it is one.
pub fn file(name: &str) -> Option<&'static str> {
    FILES.iter().copied().find(|f| *f == name)
}

/// The contents of status file `name`.
pub async fn render(svc: &Service, name: &str) -> Vec<u8> {
    let (base, as_json) = match name.strip_suffix(".json") {
        Some(b) => (b, true),
        None => (name, false),
    };
    let v = match base {
        "agent" => agent(svc),
        "pools" => pools(svc).await,
        _ => volumes(svc).await,
    };
    if as_json {
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        return s.into_bytes();
    }
    text(base, &v).into_bytes()
}

fn agent(svc: &Service) -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "fuse_mountpoint": svc.fuse_mountpoint(),
        "cleaner": svc.manager().cleaner_mode(),
    })
}

async fn pools(svc: &Service) -> Value {
    let mut rows = Vec::new();
    for name in svc.pool_names() {
        let uri = svc.pool_uri(&name).unwrap_or_default();
        let state = match svc.pool_status(&name) {
            Ok(s) if s.is_empty() => "ok".to_string(),
            Ok(s) => s,
            Err(e) => e.to_string(),
        };
        let volumes = svc.volumes(&name).await.map(|v| v.len()).unwrap_or(0);
        rows.push(json!({"name": name, "uri": uri, "state": state, "volumes": volumes}));
    }
    Value::Array(rows)
}

/// One row per volume, with the fields of `hlfs --json volume list` plus the cleaner's state.
async fn volumes(svc: &Service) -> Value {
    let cleaner = svc.manager().cleaner_mode();
    let mut rows = Vec::new();
    for pool in svc.pool_names() {
        let Ok(names) = svc.volumes(&pool).await else {
            continue;
        };
        for name in names {
            rows.push(match svc.volume(&pool, &name).await {
                Ok(i) => json!({
                    "pool": i.pool, "name": i.name, "size": i.size,
                    "allocated": i.allocated, "physical": i.physical,
                    "reclaimable": i.reclaimable, "compression": i.compression,
                    "block_size": i.block_size, "base": i.base, "segments": i.segments,
                    "live_ratio": i.live_ratio, "export": i.export,
                    "cleaner": cleaner,
                }),
                Err(e) => json!({"pool": pool, "name": name, "error": e.to_string()}),
            });
        }
    }
    Value::Array(rows)
}

/// The text form: `key: value` lines for the agent, a table for pools and volumes.
fn text(base: &str, v: &Value) -> String {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match base {
        "agent" => {
            let mut out = String::new();
            if let Value::Object(m) = v {
                for (k, val) in m {
                    out += &format!("{k}: {}\n", s(val));
                }
            }
            out
        }
        "pools" => {
            let mut out = format!(
                "{:<16} {:<8} {:>7}  {}\n",
                "POOL", "STATE", "VOLUMES", "URI"
            );
            for r in v.as_array().into_iter().flatten() {
                out += &format!(
                    "{:<16} {:<8} {:>7}  {}\n",
                    s(&r["name"]),
                    s(&r["state"]),
                    s(&r["volumes"]),
                    s(&r["uri"])
                );
            }
            out
        }
        _ => {
            let mut out = format!(
                "{:<28} {:>14} {:>14} {:>14} {:>14}  {}\n",
                "VOLUME", "SIZE", "ALLOCATED", "PHYSICAL", "RECLAIMABLE", "CLEANER"
            );
            for r in v.as_array().into_iter().flatten() {
                let name = format!("{}/{}", s(&r["pool"]), s(&r["name"]));
                if let Some(e) = r["error"].as_str() {
                    out += &format!("{name:<28} error: {e}\n");
                    continue;
                }
                out += &format!(
                    "{name:<28} {:>14} {:>14} {:>14} {:>14}  {}\n",
                    s(&r["size"]),
                    s(&r["allocated"]),
                    s(&r["physical"]),
                    s(&r["reclaimable"]),
                    s(&r["cleaner"])
                );
            }
            out
        }
    }
}
