//! Requests: what an enforcement point asks, the grants that match it, and its Cedar form.
//!
//! Grant matching happens here, with the pattern types of [`crate::policy::pattern`]; the
//! Cedar request built from it carries the matching grant ids in `context.grants`.

use std::collections::HashMap;
use std::net::SocketAddr;

use cedar_policy::{Context, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};

use crate::policy::ComponentPolicy;
use crate::policy::pattern::{HttpScheme, canonical_ip};

/// The actions of the Cedar schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Read a file or list a directory.
    FsRead,
    /// Create, change or remove a file or directory.
    FsWrite,
    /// Open a TCP connection.
    NetConnect,
    /// Listen on a TCP address.
    NetBind,
    /// Send or bind UDP.
    NetUdp,
    /// Resolve a DNS name.
    NetLookup,
    /// Send an outbound HTTP request.
    HttpRequest,
    /// Call a function of another component.
    Call,
}

impl Action {
    /// The action's Cedar name, e.g. `net.connect`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FsRead => "fs.read",
            Self::FsWrite => "fs.write",
            Self::NetConnect => "net.connect",
            Self::NetBind => "net.bind",
            Self::NetUdp => "net.udp",
            Self::NetLookup => "net.lookup",
            Self::HttpRequest => "http.request",
            Self::Call => "call",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request to authorise.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Request {
    /// A path-taking filesystem call. `path` is the guest's absolute path.
    File {
        /// Whether the call mutates.
        write: bool,
        /// The path.
        path: String,
    },
    /// A socket operation (`action` is `NetConnect`, `NetBind` or `NetUdp`).
    Socket {
        /// Which operation.
        action: Action,
        /// The address.
        addr: SocketAddr,
    },
    /// A DNS lookup.
    Lookup {
        /// The name.
        name: String,
    },
    /// An outbound HTTP request.
    Http {
        /// The method, uppercase.
        method: String,
        /// The scheme.
        scheme: HttpScheme,
        /// The host in the URL's authority.
        host: String,
        /// The port (the scheme's default if the URL has none).
        port: u16,
        /// The path, without the query.
        path: String,
    },
    /// A call through a link.
    Call {
        /// The callee component.
        component: String,
        /// The interface, as the callee exports it (with version, if any).
        interface: String,
        /// The function.
        function: String,
    },
}

pub(super) struct Built {
    pub request: cedar_policy::Request,
    pub resource: Entity,
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    // Cedar parses a type name with its full grammar each time; the schema's few names are
    // parsed once per process.
    static KNOWN: std::sync::OnceLock<Vec<EntityTypeName>> = std::sync::OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        [
            "Component",
            "Action",
            "Path",
            "Endpoint",
            "Host",
            "Function",
        ]
        .iter()
        .filter_map(|t| t.parse().ok())
        .collect()
    });
    let ty = match known
        .iter()
        .find(|k| k.basename() == ty && k.namespace().is_empty())
    {
        Some(k) => k.clone(),
        None => ty.parse().map_err(|e| format!("{e}"))?,
    };
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

fn s(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_owned())
}

impl Request {
    /// The Cedar action.
    pub fn action(&self) -> Action {
        match self {
            Self::File { write: false, .. } => Action::FsRead,
            Self::File { write: true, .. } => Action::FsWrite,
            Self::Socket { action, .. } => *action,
            Self::Lookup { .. } => Action::NetLookup,
            Self::Http { .. } => Action::HttpRequest,
            Self::Call { .. } => Action::Call,
        }
    }

    /// The resource as one line of text, for logs and messages.
    pub fn resource(&self) -> String {
        match self {
            Self::File { path, .. } => path.clone(),
            Self::Socket { action, addr } => {
                let scheme = if *action == Action::NetUdp {
                    "udp"
                } else {
                    "tcp"
                };
                format!("{scheme}://{addr}")
            }
            Self::Lookup { name } => name.clone(),
            Self::Http {
                scheme,
                host,
                port,
                path,
                ..
            } => {
                format!("{}://{host}:{port}{path}", scheme.as_str())
            }
            Self::Call {
                component,
                interface,
                function,
            } => format!("{component}/{interface}#{function}"),
        }
    }

    /// Ids of the component's grants whose patterns match this request.
    pub(super) fn matching_grants(&self, c: &ComponentPolicy) -> Vec<String> {
        match self {
            Self::File { write, path } => {
                let path = normalise(path);
                c.files
                    .iter()
                    .filter(|f| within(&path, &f.guest))
                    .filter(|f| !*write || f.access == crate::policy::Access::ReadWrite)
                    .map(|f| f.id.to_string())
                    .collect()
            }
            Self::Socket { action, addr } => {
                let list = match action {
                    Action::NetConnect => &c.network.connect,
                    Action::NetBind => &c.network.bind,
                    _ => &c.network.udp,
                };
                list.iter()
                    .filter(|g| g.pattern.matches(*addr))
                    .map(|g| g.id.to_string())
                    .collect()
            }
            Self::Lookup { name } => c
                .network
                .lookup
                .iter()
                .filter(|g| g.pattern.matches(name))
                .map(|g| g.id.to_string())
                .collect(),
            Self::Http {
                method,
                scheme,
                host,
                port,
                path,
            } => c
                .http
                .iter()
                .filter(|g| g.url.matches(*scheme, host, *port, path))
                .filter(|g| listed(&g.methods, method))
                .map(|g| g.id.to_string())
                .collect(),
            Self::Call {
                component,
                interface,
                function,
            } => c
                .calls
                .iter()
                .filter(|g| g.component == *component && interface_matches(&g.interface, interface))
                .filter(|g| listed(&g.functions, function))
                .map(|g| g.id.to_string())
                .collect(),
        }
    }

    pub(super) fn to_cedar(&self, c: &ComponentPolicy, grants: &[String]) -> Result<Built, String> {
        let component = c.name.as_str();
        let mut ctx: Vec<(String, RestrictedExpression)> = vec![(
            "grants".into(),
            RestrictedExpression::new_set(grants.iter().map(|g| s(g))),
        )];
        let (ty, id, attrs): (&str, String, HashMap<String, RestrictedExpression>) = match self {
            Self::File { path, .. } => {
                let path = normalise(path);
                // The mount the path falls under (the longest), granted or not.
                let mount = c
                    .files
                    .iter()
                    .map(|f| f.guest.as_str())
                    .filter(|m| within(&path, m))
                    .max_by_key(|m| m.len())
                    .unwrap_or("")
                    .to_owned();
                ctx.push(("mount".into(), s(&mount)));
                (
                    "Path",
                    path.clone(),
                    HashMap::from([("path".into(), s(&path))]),
                )
            }
            Self::Socket { action, addr } => {
                let ip = canonical_ip(addr.ip());
                ctx.push(("ip".into(), RestrictedExpression::new_ip(ip.to_string())));
                ctx.push((
                    "port".into(),
                    RestrictedExpression::new_long(addr.port().into()),
                ));
                let scheme = if *action == Action::NetUdp {
                    "udp"
                } else {
                    "tcp"
                };
                (
                    "Endpoint",
                    self.resource(),
                    HashMap::from([
                        ("scheme".into(), s(scheme)),
                        ("host".into(), s(&ip.to_string())),
                        (
                            "port".into(),
                            RestrictedExpression::new_long(addr.port().into()),
                        ),
                    ]),
                )
            }
            Self::Lookup { name } => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                (
                    "Host",
                    name.clone(),
                    HashMap::from([("name".into(), s(&name))]),
                )
            }
            Self::Http {
                method,
                scheme,
                host,
                port,
                path,
            } => {
                ctx.push(("method".into(), s(method)));
                ctx.push(("path".into(), s(path)));
                (
                    "Endpoint",
                    format!("{}://{}:{port}", scheme.as_str(), host.to_ascii_lowercase()),
                    HashMap::from([
                        ("scheme".into(), s(scheme.as_str())),
                        ("host".into(), s(&host.to_ascii_lowercase())),
                        (
                            "port".into(),
                            RestrictedExpression::new_long((*port).into()),
                        ),
                    ]),
                )
            }
            Self::Call {
                component: callee,
                interface,
                function,
            } => (
                "Function",
                self.resource(),
                HashMap::from([
                    ("component".into(), s(callee)),
                    ("interface".into(), s(interface)),
                    ("name".into(), s(function)),
                ]),
            ),
        };
        let resource_uid = uid(ty, &id)?;
        let resource = Entity::new(resource_uid.clone(), attrs, Default::default())
            .map_err(|e| e.to_string())?;
        let context = Context::from_pairs(ctx).map_err(|e| e.to_string())?;
        let request = cedar_policy::Request::new(
            uid("Component", component)?,
            uid("Action", self.action().as_str())?,
            resource_uid,
            context,
            None,
        )
        .map_err(|e| e.to_string())?;
        Ok(Built { request, resource })
    }
}

/// An optional allow-list: `None` allows everything, otherwise `item` must be listed.
fn listed(list: &Option<Vec<String>>, item: &str) -> bool {
    list.as_ref().is_none_or(|l| l.iter().any(|x| x == item))
}

/// Lexically normalises an absolute guest path: `.` dropped, `..` pops (never above `/`).
pub(crate) fn normalise(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// For a request no grant matched, a grant that nearly did and what it lacks, e.g.
/// ``app.files[0]` grants `/config` read-only`: a default deny is then not mistaken for a
/// missing grant.
pub fn near_miss(component: &crate::policy::ComponentPolicy, request: &Request) -> Option<String> {
    match request {
        Request::File { write: true, path } => component
            .files
            .iter()
            .find(|g| g.access == crate::policy::Access::ReadOnly && within(path, &g.guest))
            .map(|g| format!("`{}` grants `{}` read-only", g.id, g.guest)),
        Request::Call {
            component: callee,
            interface,
            function,
        } => component.calls.iter().find_map(|g| {
            let listed = g.functions.as_ref()?;
            (g.component == *callee
                && interface_matches(&g.interface, interface)
                && !listed.contains(function))
            .then(|| {
                format!(
                    "`{}` grants only {} of `{}`",
                    g.id,
                    listed
                        .iter()
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    g.interface
                )
            })
        }),
        _ => None,
    }
}

/// Is `path` the mount point or below it?
fn within(path: &str, mount: &str) -> bool {
    mount == "/" || path == mount || path.strip_prefix(mount).is_some_and(|r| r.starts_with('/'))
}

/// A grant without a version matches every version of the interface; with one, only that.
fn interface_matches(granted: &str, called: &str) -> bool {
    if granted.contains('@') {
        granted == called
    } else {
        called.split('@').next() == Some(granted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_never_leaves_root() {
        assert_eq!(normalise("/a/../../etc/passwd"), "/etc/passwd");
        assert_eq!(normalise("/static/./x/../y"), "/static/y");
        assert_eq!(normalise("/"), "/");
    }

    #[test]
    fn within_respects_segments() {
        assert!(within("/static/a", "/static"));
        assert!(within("/static", "/static"));
        assert!(!within("/staticx", "/static"));
        assert!(within("/anything", "/"));
    }

    #[test]
    fn interface_versions() {
        assert!(interface_matches(
            "example:image/image-processor",
            "example:image/image-processor@0.1.0"
        ));
        assert!(interface_matches(
            "example:image/image-processor@0.1.0",
            "example:image/image-processor@0.1.0"
        ));
        assert!(!interface_matches(
            "example:image/image-processor@0.2.0",
            "example:image/image-processor@0.1.0"
        ));
        assert!(!interface_matches(
            "example:image/other",
            "example:image/image-processor"
        ));
    }
}
