//! The options `#[task]` and `#[flow]` share, as typed values.

use syn::{parse_quote, Expr, LitStr};

use crate::ctxt::Ctxt;
use crate::options::{self, Count, RetryDelay, Seconds};

/// Options of both macros.
pub(crate) struct Common {
    /// Where the facade is (`crate = path`), `::flowrun` by default.
    pub(crate) krate: syn::Path,
    pub(crate) name: Option<LitStr>,
    pub(crate) description: Option<LitStr>,
    pub(crate) retries: Option<Count>,
    pub(crate) retry_delay: Option<RetryDelay>,
    pub(crate) timeout: Option<Seconds>,
    /// `on_completion = [f, g]` and the other hooks, in the order written.
    pub(crate) hooks: Vec<(syn::Ident, Vec<Expr>)>,
    /// `task_run_name` or `flow_run_name`.
    pub(crate) run_name: Option<crate::names::RunName>,
    /// `log_prints = true | false`; unset follows the global setting.
    pub(crate) log_prints: Option<bool>,
    /// `tags = ["a", "b"]`.
    pub(crate) tags: Vec<LitStr>,
    /// The result options (a flow accepts fewer: its `VALID` list says
    /// which).
    pub(crate) results: crate::task::results::ResultAttr,
}

impl Default for Common {
    fn default() -> Self {
        Common {
            krate: parse_quote!(::flowrun),
            name: None,
            description: None,
            retries: None,
            retry_delay: None,
            timeout: None,
            hooks: Vec::new(),
            run_name: None,
            log_prints: None,
            tags: Vec::new(),
            results: Default::default(),
        }
    }
}

impl Common {
    /// The path of the facade's support items the generated code calls.
    pub(crate) fn private_path(&self) -> proc_macro2::TokenStream {
        let krate = &self.krate;
        quote::quote!(#krate::__private)
    }

    /// The name runs show: `name = "..."`, or `default()`.
    pub(crate) fn display_name(&self, default: impl FnOnce() -> String) -> String {
        self.name
            .as_ref()
            .map(|n| n.value())
            .unwrap_or_else(default)
    }

    /// Reads the options in `args` (checked against `valid` for macro
    /// `what`): `own` reads the options of one macro (it may add to these
    /// shared ones, such as a hook) and hands back the value of any other,
    /// which is a shared option read here.
    pub(crate) fn read_all(
        &mut self,
        args: proc_macro2::TokenStream,
        valid: &[&str],
        what: &str,
        cx: &Ctxt,
        mut own: impl FnMut(&mut Common, &str, Expr) -> Option<Expr>,
    ) {
        for (name, value) in options::accept(args, valid, what, cx) {
            if let Some(value) = own(self, &name, value) {
                let shared = self.read(&name, &value, cx);
                debug_assert!(shared, "`accept` passes only the names in `valid`");
            }
        }
    }

    /// Reads option `name` if it is a shared one; false if it is not.
    pub(crate) fn read(&mut self, name: &str, value: &Expr, cx: &Ctxt) -> bool {
        match name {
            "crate" => {
                if let Some(path) = options::krate(value, cx) {
                    self.krate = path;
                }
            }
            "name" => self.name = options::string(value, "name", cx),
            "description" => self.description = options::string(value, "description", cx),
            "retries" => self.retries = options::count(value, "retries", cx),
            "retry_delay" => self.retry_delay = options::retry_delay(value, cx),
            "timeout" => self.timeout = Some(options::seconds(value)),
            "task_run_name" | "flow_run_name" => {
                self.run_name = Some(crate::names::parse(value.clone()))
            }
            "log_prints" => self.log_prints = crate::prints::parse(value, cx),
            "tags" => self.tags = options::tags(value, cx),
            hook if hook.starts_with("on_") => {
                let ident = syn::Ident::new(hook, proc_macro2::Span::call_site());
                self.hooks.push((ident, options::functions(value)));
            }
            _ => return self.results.read(name, value, cx),
        }
        true
    }
}
