//! Compose files and their `.env`, rendered as text.
//!
//! Written by hand rather than through a YAML serialiser: serde_yaml is
//! deprecated, and the only YAML we need is a fixed shape of mappings and
//! lists whose every scalar we quote ourselves. Every string value is a
//! double-quoted YAML scalar (so `true`, `1.50` or `null` stay strings, as
//! compose requires for environment values) with `$` doubled (so neither
//! `docker compose` nor `podman-compose` interpolates it): what a container
//! sees is exactly the configured value, quotes, backslashes and newlines
//! included.

use std::fmt::Write;

/// A whole compose file.
#[derive(Debug, Clone, Default)]
pub struct ComposeFile {
    pub services: Vec<Service>,
    /// Named volumes (compose prefixes them with the project name).
    pub volumes: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Service {
    pub name: String,
    pub image: String,
    /// Exec form; empty keeps the image's command.
    pub command: Vec<String>,
    pub environment: Vec<(String, String)>,
    pub ports: Vec<PortMapping>,
    pub depends_on: Vec<(String, Condition)>,
    pub healthcheck: Option<Healthcheck>,
    /// `(named volume, path in the container)`.
    pub volumes: Vec<(String, String)>,
    /// `(absolute host path, path in the container)`, mounted read-only.
    pub binds: Vec<(String, String)>,
    pub cpu_shares: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Started,
    Healthy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// Empty for every interface.
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
}

#[derive(Debug, Clone)]
pub struct Healthcheck {
    /// Run by the container's `/bin/sh -c`.
    pub shell: String,
    pub interval: &'static str,
    pub timeout: &'static str,
    pub retries: u32,
}

impl ComposeFile {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    pub fn render(&self) -> String {
        let mut out = String::from(
            "# Written by dallinger-oci; run compose commands on it with the same project name.\n",
        );
        out.push_str("services:\n");
        for service in &self.services {
            render_service(&mut out, service);
        }
        if !self.volumes.is_empty() {
            out.push_str("volumes:\n");
            for volume in &self.volumes {
                let _ = writeln!(out, "  {}: {{}}", quote(volume));
            }
        }
        out
    }
}

fn render_service(out: &mut String, s: &Service) {
    let _ = writeln!(out, "  {}:", quote(&s.name));
    let _ = writeln!(out, "    image: {}", quote(&s.image));
    if !s.command.is_empty() {
        out.push_str("    command:\n");
        for word in &s.command {
            let _ = writeln!(out, "      - {}", quote(word));
        }
    }
    if let Some(shares) = s.cpu_shares {
        let _ = writeln!(out, "    cpu_shares: {shares}");
    }
    if !s.depends_on.is_empty() {
        out.push_str("    depends_on:\n");
        for (name, condition) in &s.depends_on {
            let condition = match condition {
                Condition::Started => "service_started",
                Condition::Healthy => "service_healthy",
            };
            let _ = writeln!(
                out,
                "      {}:\n        condition: {condition}",
                quote(name)
            );
        }
    }
    if let Some(h) = &s.healthcheck {
        out.push_str("    healthcheck:\n      test:\n        - \"CMD-SHELL\"\n");
        let _ = writeln!(out, "        - {}", quote(&h.shell));
        let _ = writeln!(
            out,
            "      interval: {}\n      timeout: {}\n      retries: {}",
            quote(h.interval),
            quote(h.timeout),
            h.retries
        );
    }
    if !s.environment.is_empty() {
        out.push_str("    environment:\n");
        for (key, value) in &s.environment {
            let _ = writeln!(out, "      {}: {}", quote(key), quote(value));
        }
    }
    if !s.ports.is_empty() {
        out.push_str("    ports:\n");
        for p in &s.ports {
            let mapping = if p.host_ip.is_empty() {
                format!("{}:{}", p.host_port, p.container_port)
            } else {
                format!("{}:{}:{}", p.host_ip, p.host_port, p.container_port)
            };
            let _ = writeln!(out, "      - {}", quote(&mapping));
        }
    }
    if !s.volumes.is_empty() || !s.binds.is_empty() {
        out.push_str("    volumes:\n");
        for (volume, path) in &s.volumes {
            let _ = writeln!(out, "      - {}", quote(&format!("{volume}:{path}")));
        }
        for (host, path) in &s.binds {
            let _ = writeln!(out, "      - {}", quote(&format!("{host}:{path}:ro")));
        }
    }
}

/// A YAML double-quoted scalar for compose: `$` doubled against
/// interpolation, `\` and `"` escaped, and every character YAML would fold,
/// drop or reject (controls, DEL, NEL, the Unicode line and paragraph
/// separators, a byte order mark) written as an escape.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `.env` beside the compose file: the project name, so compose commands
/// typed in that directory address the same containers. Names only; no
/// value of the experiment's configuration goes here.
pub fn dotenv(project: &str) -> String {
    format!("COMPOSE_PROJECT_NAME={project}\n")
}

/// A compose project name from any text: lowercase letters, digits, `-` and
/// `_`, starting with a letter or digit (what compose v2 accepts).
pub fn project_name(text: &str) -> String {
    let mut name: String = text
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if name.is_empty() {
        name = "experiment".into();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_values_literal() {
        assert_eq!(quote("true"), r#""true""#);
        assert_eq!(quote("$1.50"), r#""$$1.50""#);
        assert_eq!(quote(r#"say "hi" \o/"#), r#""say \"hi\" \\o/""#);
        assert_eq!(quote("a\nb\u{2028}"), r#""a\nb\u2028""#);
        assert_eq!(quote("\u{1b}[0m"), r#""\x1b[0m""#);
        assert_eq!(quote("ünï"), "\"ünï\"");
    }

    #[test]
    fn project_names() {
        assert_eq!(project_name("Dallinger Demo"), "dallinger-demo");
        assert_eq!(project_name("..x_1"), "x_1");
        assert_eq!(project_name("..."), "experiment");
    }

    #[test]
    fn renders_services() {
        let file = ComposeFile {
            services: vec![Service {
                name: "web".into(),
                image: "img@sha256:ab".into(),
                command: vec!["dallinger_heroku_web".into()],
                environment: vec![("mode".into(), "sandbox".into())],
                ports: vec![PortMapping {
                    host_ip: "127.0.0.1".into(),
                    host_port: 5001,
                    container_port: 5000,
                }],
                depends_on: vec![("redis".into(), Condition::Healthy)],
                ..Service::default()
            }],
            volumes: vec!["redis_data".into()],
        };
        let text = file.render();
        assert!(text.contains("      - \"127.0.0.1:5001:5000\"\n"), "{text}");
        assert!(
            text.contains("      \"redis\":\n        condition: service_healthy\n"),
            "{text}"
        );
        assert!(text.contains("      \"mode\": \"sandbox\"\n"), "{text}");
        assert!(text.ends_with("volumes:\n  \"redis_data\": {}\n"), "{text}");
    }

    #[test]
    fn renders_binds_read_only_after_volumes() {
        let file = ComposeFile {
            services: vec![Service {
                name: "web".into(),
                image: "img".into(),
                volumes: vec![("data".into(), "/data".into())],
                binds: vec![("/src/dallinger".into(), "/usr/lib/x/dallinger".into())],
                ..Service::default()
            }],
            volumes: vec![],
        };
        assert!(
            file.render().ends_with(
                "    volumes:\n      - \"data:/data\"\n      - \"/src/dallinger:/usr/lib/x/dallinger:ro\"\n"
            ),
            "{}",
            file.render()
        );
    }
}
