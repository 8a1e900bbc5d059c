//! `postern config show`: the configuration as postern reads it, every key with its value.
//!
//! The file's own keys are merged over the documented defaults of [`DEFAULT_CONFIG`] (which
//! documents every key), and the defaults that are computed (`data_dir`, `min_free_space`,
//! `max_connections_per_ip_exempt`) are taken from the loaded [`Settings`]. Keys the file
//! does not set are marked `# default`. Listener roles are never defaulted: a role the file
//! does not list is off. The result is itself a valid `postern.toml` that loads to the same
//! settings (a test checks that for the default and a file that sets every table), and it
//! holds no secret: a smarthost's password stays in its `password_file`.

use toml::{Table, Value};

use crate::config::Settings;
use crate::config::init::DEFAULT_CONFIG;

/// The tables whose keys are names (domains, addresses): their entries come from the file
/// only, none from the defaults (which have none).
const NAME_TABLES: [&str; 3] = ["routes", "mailboxes", "senders"];

/// The effective configuration of `settings`, loaded from `text`, as TOML.
pub fn render(settings: &Settings, text: &str) -> Result<String, toml::de::Error> {
    let mut defaults: Table = toml::from_str(DEFAULT_CONFIG)?;
    let file: Table = toml::from_str(text)?;
    if let Some(Value::Table(listeners)) = defaults.get_mut("listeners") {
        for role in ["smtp", "submission", "submissions"] {
            listeners.remove(role);
        }
    }
    // The computed defaults, each placed after the key it sits beside in the documented file.
    let computed = [
        (
            "hostname",
            "data_dir",
            Value::String(settings.data_dir.display().to_string()),
        ),
        (
            "max_message_size",
            "min_free_space",
            Value::Integer(i64::try_from(settings.min_free_space).unwrap_or(i64::MAX)),
        ),
        (
            "max_connections_per_ip",
            "max_connections_per_ip_exempt",
            Value::Array(
                settings
                    .per_ip_exempt
                    .iter()
                    .map(|n| Value::String(n.to_string()))
                    .collect(),
            ),
        ),
    ];
    let computed_value = |key: &str| {
        computed
            .iter()
            .find(|(_, k, _)| *k == key)
            .map(|(_, _, v)| v.clone())
    };
    let mut out = format!(
        "# {} as postern reads it: every key, with the default where the file sets none\n\
         # (marked `# default`). Listener roles not listed are off.\n",
        settings.file.display()
    );
    // Top-level keys first (in the documented order, then the file's others), then tables.
    let mut keys: Vec<&str> = Vec::new();
    for (key, value) in defaults.iter().chain(file.iter()) {
        let beside = computed
            .iter()
            .find(|(after, _, _)| *after == key.as_str())
            .map(|(_, k, _)| *k);
        for key in std::iter::once(key.as_str())
            .filter(|_| !value.is_table())
            .chain(beside)
        {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    for key in keys {
        let (value, default) = match (file.get(key), defaults.get(key), computed_value(key)) {
            // data_dir as resolved, whether written relative or not written.
            (written, _, Some(resolved)) if key == "data_dir" => (resolved, written.is_none()),
            (Some(v), _, _) => (v.clone(), false),
            (None, Some(v), _) => (v.clone(), true),
            (None, None, Some(v)) => (v, true),
            (None, None, None) => continue,
        };
        line(&mut out, key, &value, default);
    }
    let mut tables: Vec<&str> = Vec::new();
    for (key, value) in defaults.iter().chain(file.iter()) {
        if value.is_table() && !tables.contains(&key.as_str()) {
            tables.push(key);
        }
    }
    let empty = Table::new();
    for name in tables {
        let table = |t: &Table| match t.get(name) {
            Some(Value::Table(t)) => t.clone(),
            _ => empty.clone(),
        };
        let (ours, documented) = (table(&file), table(&defaults));
        out.push_str(&format!("\n[{}]\n", key_text(name)));
        let names = documented
            .keys()
            .chain(ours.keys().filter(|k| !documented.contains_key(*k)));
        for key in names {
            match (ours.get(key), documented.get(key)) {
                (Some(v), _) => line(&mut out, key, v, false),
                (None, Some(v)) if !NAME_TABLES.contains(&name) => line(&mut out, key, v, true),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// `key = value`, with `# default` when the file does not set it.
fn line(out: &mut String, key: &str, value: &Value, default: bool) {
    out.push_str(&key_text(key));
    out.push_str(" = ");
    out.push_str(&inline(value));
    if default {
        out.push_str("  # default");
    }
    out.push('\n');
}

/// A key as TOML writes it: bare when it can be, quoted otherwise (addresses, domains).
fn key_text(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_string()
    } else {
        Value::String(key.to_string()).to_string()
    }
}

/// A value on one line: inline tables and arrays spelled out, scalars as TOML writes them.
fn inline(value: &Value) -> String {
    match value {
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(inline).collect::<Vec<_>>().join(", ")
        ),
        Value::Table(t) if t.is_empty() => "{}".to_string(),
        Value::Table(t) => format!(
            "{{ {} }}",
            t.iter()
                .map(|(k, v)| format!("{} = {}", key_text(k), inline(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        scalar => scalar.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Settings without the line numbers they were read from, to compare two loadings.
    fn without_lines(settings: &Settings) -> String {
        let mut settings = settings.clone();
        settings.data_dir_line = None;
        let text = format!("{settings:?}");
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("line: ") {
            out.push_str(&rest[..at + 6]);
            rest = rest[at + 6..].trim_start_matches(|c: char| c.is_ascii_digit());
        }
        out.push_str(rest);
        out
    }

    fn round_trip(dir: &Path, text: &str) -> String {
        let file = dir.join("postern.toml");
        let settings = Settings::parse(dir, &file, text).expect("the file loads");
        let shown = render(&settings, text).expect("renders");
        let again = Settings::parse(dir, &file, &shown)
            .unwrap_or_else(|e| panic!("the shown file loads: {e}\n{shown}"));
        assert_eq!(
            without_lines(&again),
            without_lines(&settings),
            "the shown file loads to other settings:\n{shown}"
        );
        shown
    }

    /// The embedded default shows with every documented key, and loads back the same.
    #[test]
    fn the_default_shows_every_key_and_loads_back_the_same() {
        let shown = round_trip(Path::new("/etc/postern"), DEFAULT_CONFIG);
        for want in [
            "hostname = \"localhost\"\n",
            "data_dir = \"/var/lib/postern\"  # default\n",
            "min_free_space = 104857600  # default\n",
            "max_connections_per_ip_exempt = [\"127.0.0.0/8\", \"::1/128\"]  # default\n",
            "\n[listeners]\nsmtp = [\"127.0.0.1:2525\"]\n",
            "\n[delivery]\nip_preference = \"ipv6\"\n",
            "\n[checks]\nenabled = true\n",
            "\n[senders]\n",
        ] {
            assert!(shown.contains(want), "{want:?} in\n{shown}");
        }
    }

    /// A short file: the rest comes from the defaults, marked; its own tables and name
    /// tables are shown as written, and a role it does not list stays off.
    #[test]
    fn a_short_file_gets_the_defaults_marked() {
        let text = "hostname = \"mx.example.org\"\ndata_dir = \"state\"\nmax_message_size = 1000000\n\
            [listeners]\nsmtp = [\"0.0.0.0:25\", \"[::]:25\"]\nmax_connections = { smtp = 2000 }\n\
            [delivery]\nfirst_retry = 60\ndelay_warning_after = 7200\n\
            [routes]\n\"*\" = { host = \"smtp.provider.example:587\", tls = \"required\", user = \"me\", password_file = \"smarthost.secret\" }\n\
            \"example.com\" = \"mx.internal.example:25\"\n\
            [mailboxes]\n\"example.org\" = { lmtp = \"unix:/run/dovecot/lmtp\" }\n\
            \"bob@example.org\" = { command = \"/usr/bin/procmail -d %to_user%\", timeout = 60 }\n\
            [senders]\n\"alice@example.org\" = [\"example.net\", \"<>\"]\n\
            [checks]\ndmarc_quarantine = \"reject\"\n\
            [relay]\ntrusted_networks = [\"192.0.2.0/24\"]\n";
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("smarthost.secret"), "hunter2-pw\n").expect("secret");
        let shown = round_trip(tmp.path(), text);
        assert!(!shown.contains("hunter2"), "no password: {shown}");
        for want in [
            &*format!("data_dir = \"{}/state\"\n", tmp.path().display()),
            "max_message_size = 1000000\n",
            // Twice max_message_size, computed.
            "min_free_space = 2000000  # default\n",
            "command_timeout = 300  # default\n",
            "\n[listeners]\nsmtp = [\"0.0.0.0:25\", \"[::]:25\"]\nmax_connections = { smtp = 2000 }\n",
            "first_retry = 60\n",
            "max_retry_interval = 4000  # default\n",
            "delay_warning_after = 7200\n",
            "\"*\" = { host = \"smtp.provider.example:587\", tls = \"required\", user = \"me\", password_file = \"smarthost.secret\" }\n",
            "\"bob@example.org\" = { command = \"/usr/bin/procmail -d %to_user%\", timeout = 60 }\n",
            "\"alice@example.org\" = [\"example.net\", \"<>\"]\n",
            "dmarc_quarantine = \"reject\"\n",
            "spf_fail = \"reject\"  # default\n",
        ] {
            assert!(shown.contains(want), "{want:?} in\n{shown}");
        }
        assert!(!shown.contains("submission ="), "{shown}");
    }
}
