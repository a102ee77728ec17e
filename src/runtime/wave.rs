//! WAVE text for [`Host::call`](super::Host::call): arguments parsed against the exported
//! function's type, results printed back.

use wasmtime::component::Val;
use wasmtime::component::types::ComponentFunc;

use super::error::RunError;

/// Parses `args` (one WAVE value each) as the parameters of `function` of type `ty`.
pub(super) fn parse_args(
    function: &str,
    ty: &ComponentFunc,
    args: &[String],
) -> Result<Vec<Val>, String> {
    let params: Vec<_> = ty.params().collect();
    if params.len() != args.len() {
        let names: Vec<&str> = params.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "`{function}` takes {} argument{} ({}), {} given",
            params.len(),
            if params.len() == 1 { "" } else { "s" },
            names.join(", "),
            args.len()
        ));
    }
    params
        .iter()
        .zip(args)
        .map(|((n, t), a)| {
            wasm_wave::from_str::<Val>(t, a).map_err(|e| {
                format!("argument `{n}`: `{a}` is not a valid WAVE value of its type: {e}")
            })
        })
        .collect()
}

/// `results` of a call into `component`, as WAVE text.
pub(super) fn print(component: &str, results: &[Val]) -> Result<Vec<String>, RunError> {
    results
        .iter()
        .map(|v| {
            wasm_wave::to_string(v).map_err(|e| RunError::Trap {
                component: component.to_owned(),
                message: format!("cannot print a result: {e}"),
            })
        })
        .collect()
}
