//! The environment's machines, read from a dump just taken (so they come from the same
//! consistent snapshot as the database itself): which machines exist, every address, and which
//! ones are state-servers. Dead machines are left out.
//!
//! Sources: MongoDB's `machines` collection (Juju 1.x-3.x, `juju/machines.bson` in the dump);
//! Juju 4's `machine` and `ip_address` tables (dqlite, or a sqlite file with that schema); a
//! configured SQL query (sqlite); or the JSON an `inventory_command` prints (command engine).

use std::collections::BTreeMap;
use std::path::Path;

use super::Machine;

/// Caps: an inventory is recorded in metadata.json, which is itself bounded.
pub const MAX_MACHINES: usize = 10_000;
const MAX_ADDRESSES: usize = 32;
const MAX_FIELD: usize = 256;

/// Collects rows (one machine may come in several, one per address) into machines, in id order.
#[derive(Default)]
struct Collector {
    machines: BTreeMap<String, Machine>,
}

impl Collector {
    fn add(&mut self, id: &str, address: Option<&str>, state_server: bool) -> Result<(), String> {
        if id.is_empty() || id.len() > MAX_FIELD {
            return Err(format!("machine id {id:?} is empty or too long"));
        }
        if !self.machines.contains_key(id) && self.machines.len() >= MAX_MACHINES {
            return Err(format!("more than {MAX_MACHINES} machines"));
        }
        let m = self
            .machines
            .entry(id.to_string())
            .or_insert_with(|| Machine {
                id: id.to_string(),
                addresses: Vec::new(),
                state_server: false,
            });
        m.state_server |= state_server;
        if let Some(a) = address.map(str::trim).filter(|a| !a.is_empty()) {
            // Juju 4 stores addresses with their prefix length (`10.0.0.5/24`).
            let a = a.split('/').next().unwrap_or(a);
            if a.len() <= MAX_FIELD && !m.addresses.iter().any(|x| x == a) {
                if m.addresses.len() >= MAX_ADDRESSES {
                    return Err(format!(
                        "machine {id} has more than {MAX_ADDRESSES} addresses"
                    ));
                }
                m.addresses.push(a.to_string());
            }
        }
        Ok(())
    }

    fn finish(self) -> Vec<Machine> {
        self.machines.into_values().collect()
    }
}

/// Rows of `query`: (id, addresses, state_server), where addresses is a JSON list of strings or
/// text separated by commas or spaces, and state_server is 0/1 (or absent).
pub fn from_query(conn: &rusqlite::Connection, query: &str) -> Result<Vec<Machine>, String> {
    let mut stmt = conn
        .prepare(query)
        .map_err(|e| format!("database.inventory_query: {e}"))?;
    if stmt.column_count() < 2 {
        return Err("database.inventory_query must return (id, addresses[, state_server])".into());
    }
    let three = stmt.column_count() >= 3;
    let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
    let mut c = Collector::default();
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let id = text(row.get_ref(0).map_err(|e| e.to_string())?);
        let addresses = text(row.get_ref(1).map_err(|e| e.to_string())?);
        let state_server = three && truthy(row.get_ref(2).map_err(|e| e.to_string())?);
        let list: Vec<String> = serde_json::from_str(&addresses).unwrap_or_else(|_| {
            addresses
                .split([',', ' ', '\n', '\t'])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        });
        c.add(&id, None, state_server)?;
        for a in &list {
            c.add(&id, Some(a), state_server)?;
        }
    }
    Ok(c.finish())
}

fn text(v: rusqlite::types::ValueRef) -> String {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Null => String::new(),
    }
}

fn truthy(v: rusqlite::types::ValueRef) -> bool {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Integer(i) => i != 0,
        ValueRef::Text(t) => matches!(t, b"1" | b"true" | b"yes"),
        _ => false,
    }
}

/// Whether the database has Juju 4's machine tables.
pub fn has_juju4_schema(conn: &rusqlite::Connection) -> bool {
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('machine', 'ip_address')",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0);
    n == 2
}

/// Juju 4 (dqlite): `machine` joined to `ip_address` through its net node; machine-local and
/// link-local addresses left out (scopes 3 and 4), dead machines (life 2) too.
pub fn juju4(conn: &rusqlite::Connection) -> Result<Vec<Machine>, String> {
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('machine')")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<_, _>>()
        })
        .map_err(|e| e.to_string())?;
    let has = |c: &str| columns.iter().any(|x| x == c);
    // The machine's name column was `machine_id` in early Juju 4 schemas, `name` later.
    let id = if has("name") {
        "m.name"
    } else {
        "m.machine_id"
    };
    let controller = if has("is_controller") {
        "COALESCE(m.is_controller, 0)"
    } else {
        "0"
    };
    let sql = format!(
        "SELECT {id}, {controller}, ip.address_value FROM machine AS m \
         LEFT JOIN ip_address AS ip ON ip.net_node_uuid = m.net_node_uuid \
         AND ip.scope_id NOT IN (3, 4) WHERE m.life_id != 2 ORDER BY {id}, ip.scope_id"
    );
    let mut stmt = conn.prepare(&sql).map_err(|e| e.to_string())?;
    let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
    let mut c = Collector::default();
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let id = text(row.get_ref(0).map_err(|e| e.to_string())?);
        let state_server = truthy(row.get_ref(1).map_err(|e| e.to_string())?);
        let address = text(row.get_ref(2).map_err(|e| e.to_string())?);
        c.add(&id, Some(&address), state_server)?;
    }
    Ok(c.finish())
}

/// The JSON an `inventory_command` prints: `[{"id": "1", "addresses": ["10.0.0.2"],
/// "state_server": false}, ...]`.
pub fn from_json(bytes: &[u8]) -> Result<Vec<Machine>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        id: serde_json::Value,
        #[serde(default)]
        addresses: Vec<String>,
        #[serde(default)]
        state_server: bool,
    }
    let entries: Vec<Entry> =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JSON list of machines: {e}"))?;
    let mut c = Collector::default();
    for e in entries {
        let id = match e.id {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            other => return Err(format!("machine id {other} is not a string")),
        };
        c.add(&id, None, e.state_server)?;
        for a in &e.addresses {
            c.add(&id, Some(a), e.state_server)?;
        }
    }
    Ok(c.finish())
}

/// Juju's `machines` collection as `mongodump` wrote it (`juju/machines.bson`): `machineid`,
/// `life` (2 = dead), `jobs` (2 = JobManageModel/JobManageEnviron: a state-server), `addresses`
/// and `machineaddresses` (documents with `value` and `networkscope`; cloud-local first). With
/// several models in one controller (Juju 2+), ids are prefixed with the model's UUID.
pub fn from_mongo_dump(dump_dir: &Path) -> Result<Vec<Machine>, String> {
    let path = dump_dir.join("juju").join("machines.bson");
    let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let mut docs = Vec::new();
    loop {
        match bson::Document::from_reader(&mut reader) {
            Ok(d) => docs.push(d),
            Err(bson::de::Error::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        if docs.len() > MAX_MACHINES * 4 {
            return Err(format!("more than {MAX_MACHINES} machines"));
        }
    }
    let model = |d: &bson::Document| {
        d.get_str("model-uuid")
            .or_else(|_| d.get_str("env-uuid"))
            .unwrap_or("")
            .to_string()
    };
    let models: std::collections::BTreeSet<String> = docs.iter().map(model).collect();
    let mut c = Collector::default();
    for d in &docs {
        if d.get("life").and_then(bson_int) == Some(2) {
            continue;
        }
        let Ok(machine_id) = d.get_str("machineid") else {
            continue;
        };
        let id = if models.len() > 1 {
            format!("{}/{machine_id}", model(d))
        } else {
            machine_id.to_string()
        };
        let state_server = d
            .get_array("jobs")
            .map(|jobs| jobs.iter().any(|j| bson_int(j) == Some(2)))
            .unwrap_or(false);
        c.add(&id, None, state_server)?;
        let mut addresses: Vec<(u8, String)> = Vec::new();
        for key in ["addresses", "machineaddresses"] {
            for a in d.get_array(key).map(|v| v.as_slice()).unwrap_or_default() {
                let Some(doc) = a.as_document() else { continue };
                let Ok(value) = doc.get_str("value") else {
                    continue;
                };
                let rank = match doc.get_str("networkscope").unwrap_or("") {
                    "local-cloud" => 0,
                    "public" => 1,
                    "local-machine" | "link-local" => continue,
                    _ => 2,
                };
                addresses.push((rank, value.to_string()));
            }
        }
        addresses.sort_by_key(|(rank, _)| *rank);
        for (_, a) in addresses {
            c.add(&id, Some(&a), state_server)?;
        }
    }
    Ok(c.finish())
}

fn bson_int(b: &bson::Bson) -> Option<i64> {
    match b {
        bson::Bson::Int32(i) => Some(i64::from(*i)),
        bson::Bson::Int64(i) => Some(*i),
        bson::Bson::Double(f) => Some(*f as i64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn juju4_schema_joins_addresses_and_leaves_out_dead_machines() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE machine (uuid TEXT, name TEXT, net_node_uuid TEXT, life_id INT, is_controller BOOLEAN);
             CREATE TABLE ip_address (uuid TEXT, net_node_uuid TEXT, address_value TEXT, scope_id INT);
             INSERT INTO machine VALUES ('a','0','n0',0,1), ('b','1','n1',0,0), ('c','2','n2',2,0);
             INSERT INTO ip_address VALUES ('x','n0','10.0.0.1/24',2), ('y','n1','10.0.0.2/24',2),
               ('z','n1','127.0.0.1/8',3), ('w','n1','203.0.113.9/32',1), ('v','n2','10.0.0.3/24',2);",
        )
        .unwrap();
        assert!(has_juju4_schema(&conn));
        let m = juju4(&conn).unwrap();
        assert_eq!(m.len(), 2);
        assert!(m[0].state_server);
        assert_eq!(m[1].addresses, vec!["203.0.113.9", "10.0.0.2"]);
    }

    #[test]
    fn configured_query_and_json() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE machines (id TEXT, addrs TEXT, ctl INT);
             INSERT INTO machines VALUES ('0','10.0.0.1',1), ('1','[\"10.0.0.2\",\"10.1.0.2\"]',0), ('2','10.0.0.3, 10.1.0.3',0);",
        )
        .unwrap();
        let m = from_query(&conn, "SELECT id, addrs, ctl FROM machines").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].addresses, vec!["10.0.0.2", "10.1.0.2"]);
        assert_eq!(m[2].addresses, vec!["10.0.0.3", "10.1.0.3"]);
        assert!(from_query(&conn, "SELECT id FROM machines").is_err());
        let j = from_json(
            br#"[{"id": 1, "addresses": ["10.0.0.2"]}, {"id": "0", "state_server": true}]"#,
        )
        .unwrap();
        assert_eq!(j.len(), 2);
        assert!(j[0].state_server);
        assert!(from_json(b"{}").is_err());
    }

    #[test]
    fn mongo_machines_collection() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("juju")).unwrap();
        let mut bytes = Vec::new();
        for d in [
            bson::doc! {"_id": "u:0", "machineid": "0", "model-uuid": "u", "life": 0, "jobs": [1, 2],
            "addresses": [{"value": "10.0.0.1", "networkscope": "local-cloud"}]},
            bson::doc! {"_id": "u:1", "machineid": "1", "model-uuid": "u", "life": 0, "jobs": [1],
            "addresses": [{"value": "203.0.113.2", "networkscope": "public"}, {"value": "10.0.0.2", "networkscope": "local-cloud"}],
            "machineaddresses": [{"value": "127.0.0.1", "networkscope": "local-machine"}]},
            bson::doc! {"_id": "u:2", "machineid": "2", "model-uuid": "u", "life": 2, "jobs": [1]},
        ] {
            d.to_writer(&mut bytes).unwrap();
        }
        std::fs::write(dir.path().join("juju/machines.bson"), bytes).unwrap();
        let m = from_mongo_dump(dir.path()).unwrap();
        assert_eq!(m.len(), 2);
        assert!(m[0].state_server);
        assert_eq!(m[1].addresses, vec!["10.0.0.2", "203.0.113.2"]);
    }
}
