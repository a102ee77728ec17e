//! Links between components, resolved before anything runs: each non-WASI import of a
//! component is bound to the one component its policy's `calls` names for it, the callee must
//! export the interface with the same function types, and nothing passes resources. An
//! import nobody provides, an import two callees could provide, a cycle, a type mismatch or
//! an interface that passes resources is an error naming the import.

use std::collections::{BTreeMap, BTreeSet};

use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::{ComponentItem, Type};

use super::error::RunError;
use crate::verified::VerifiedPolicy;

/// One resolved import: `caller` imports `import`, provided by `callee`'s export `export`.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub import: String,
    pub callee: String,
    pub export: String,
    pub functions: Vec<String>,
}

pub(super) fn base_name(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

/// Does any part of `ty` carry a resource (or an async handle), which cannot cross stores?
fn has_resource(ty: &Type) -> bool {
    match ty {
        Type::Own(_) | Type::Borrow(_) | Type::Future(_) | Type::Stream(_) | Type::ErrorContext => {
            true
        }
        Type::List(l) => has_resource(&l.ty()),
        Type::Record(r) => r.fields().any(|f| has_resource(&f.ty)),
        Type::Tuple(t) => t.types().any(|t| has_resource(&t)),
        Type::Variant(v) => v.cases().any(|c| c.ty.as_ref().is_some_and(has_resource)),
        Type::Option(o) => has_resource(&o.ty()),
        Type::Result(r) => {
            r.ok().as_ref().is_some_and(has_resource) || r.err().as_ref().is_some_and(has_resource)
        }
        // Maps and fixed-length lists are newer than WASI 0.2; refuse rather than guess.
        Type::Map(_) | Type::FixedLengthList(_) => true,
        _ => false,
    }
}

/// The components reachable from a root, compiled, and the links between them.
pub(crate) struct Graph {
    pub compiled: BTreeMap<String, Component>,
    pub links: BTreeMap<String, Vec<Link>>,
}

/// Resolves the links of `root` and of every component it reaches.
pub(crate) fn resolve(
    engine: &Engine,
    policy: &VerifiedPolicy,
    root: &str,
    compile: &mut dyn FnMut(&str) -> Result<Component, RunError>,
) -> Result<Graph, RunError> {
    let mut compiled = BTreeMap::new();
    let mut links: BTreeMap<String, Vec<Link>> = BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(name) = todo.pop() {
        if compiled.contains_key(&name) {
            continue;
        }
        let component = compile(&name)?;
        let spec = &policy.policy().components[&name];
        let mut mine = Vec::new();
        for (import, item) in component.component_type().imports(engine) {
            if import.starts_with("wasi:") {
                continue;
            }
            let err = |message: String| RunError::Link {
                component: name.clone(),
                import: import.to_owned(),
                message,
            };
            let callees: BTreeSet<&str> = spec
                .calls
                .iter()
                .filter(|c| c.interface == import || c.interface == base_name(import))
                .map(|c| c.component.as_str())
                .collect();
            let callee = match callees.len() {
                0 => {
                    return Err(err(
                        "no `calls` entry of the policy names this interface".into()
                    ));
                }
                1 => callees.into_iter().next().unwrap_or_default().to_owned(),
                _ => {
                    let names: Vec<String> = callees.iter().map(|c| format!("`{c}`")).collect();
                    return Err(err(format!(
                        "ambiguous: `calls` names {} for it; keep one",
                        names.join(" and ")
                    )));
                }
            };
            let ComponentItem::ComponentInstance(ity) = item.ty else {
                return Err(err("only interface (instance) imports can be linked".into()));
            };
            let callee_component = compile(&callee)?;
            let export = callee_component
                .component_type()
                .exports(engine)
                .map(|(e, _)| e.to_owned())
                .collect::<Vec<_>>();
            // The exact name (version included) first; another version only if it is the sole one.
            let export = match export.iter().find(|e| *e == import) {
                Some(e) => e.clone(),
                None => {
                    let same: Vec<&String> = export
                        .iter()
                        .filter(|e| base_name(e) == base_name(import))
                        .collect();
                    match same.as_slice() {
                        [one] => (*one).clone(),
                        [] => return Err(err(format!("component `{callee}` does not export it"))),
                        _ => {
                            return Err(err(format!(
                                "component `{callee}` exports several versions of it and none is `{import}`"
                            )));
                        }
                    }
                }
            };
            // The callee's side of the interface, to hold each function's type against.
            let callee_type = callee_component.component_type();
            let Some(ComponentItem::ComponentInstance(theirs)) =
                callee_type.get_export(engine, &export).map(|e| e.ty)
            else {
                return Err(err(format!(
                    "component `{callee}` exports `{export}`, but not as an interface"
                )));
            };
            let mut functions = Vec::new();
            for (fname, fitem) in ity.exports(engine) {
                let fty = match fitem.ty {
                    ComponentItem::ComponentFunc(fty) => fty,
                    // Plain type definitions (records, variants...) travel as values.
                    ComponentItem::Type(_) => continue,
                    ComponentItem::Resource(_) => {
                        return Err(err(format!(
                            "it defines resource `{fname}`: resources cannot cross a link between components yet"
                        )));
                    }
                    _ => {
                        return Err(err(format!(
                            "it exports `{fname}`, which is neither a function nor a type"
                        )));
                    }
                };
                if fty.params().any(|(_, t)| has_resource(&t))
                    || fty.results().any(|t| has_resource(&t))
                {
                    return Err(err(format!(
                        "function `{fname}` passes a resource, which cannot cross a link between components yet"
                    )));
                }
                // Types are checked now, before anything runs: a call whose values do not fit
                // would otherwise fail (and restart the callee) only when it is made.
                let Some(ComponentItem::ComponentFunc(their_fty)) =
                    theirs.get_export(engine, fname).map(|e| e.ty)
                else {
                    return Err(err(format!(
                        "component `{callee}` has no function `{fname}` in `{export}`"
                    )));
                };
                let same = fty
                    .params()
                    .map(|(_, t)| t)
                    .eq(their_fty.params().map(|(_, t)| t))
                    && fty.results().eq(their_fty.results());
                if !same {
                    return Err(err(format!(
                        "function `{fname}` has another type in `{callee}`'s `{export}` (its parameters or results differ): the components were built against different versions of the interface"
                    )));
                }
                functions.push(fname.to_owned());
            }
            mine.push(Link {
                import: import.to_owned(),
                callee: callee.clone(),
                export,
                functions,
            });
            todo.push(callee);
        }
        links.insert(name.clone(), mine);
        compiled.insert(name, component);
    }
    find_cycle(root, &links)?;
    Ok(Graph { compiled, links })
}

fn find_cycle(root: &str, links: &BTreeMap<String, Vec<Link>>) -> Result<(), RunError> {
    fn visit(
        n: &str,
        links: &BTreeMap<String, Vec<Link>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Result<(), RunError> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_owned());
            let first = links[&path[path.len() - 1]].iter().find(|l| l.callee == n);
            return Err(RunError::Link {
                component: path[path.len() - 1].clone(),
                import: first.map(|l| l.import.clone()).unwrap_or_default(),
                message: format!("the links form a cycle: {}", cycle.join(" → ")),
            });
        }
        if done.contains(n) {
            return Ok(());
        }
        path.push(n.to_owned());
        for l in links.get(n).map(Vec::as_slice).unwrap_or_default() {
            visit(&l.callee, links, path, done)?;
        }
        path.pop();
        done.insert(n.to_owned());
        Ok(())
    }
    visit(root, links, &mut Vec::new(), &mut BTreeSet::new())
}
