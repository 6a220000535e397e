//! Procedural macros behind `loom-sdk`: [`macro@tool`] turns a function into a
//! Loom tool and [`export_tools!`] exports a set of tools from a component.
//! Use them through `loom_sdk`, which re-exports both.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, FnArg, Ident, ItemFn, Lit, LitStr, Meta, Pat, Path, ReturnType, Token, Type};

/// Options of `#[tool(...)]`.
#[derive(Default)]
struct ToolOptions {
    name: Option<LitStr>,
    description: Option<LitStr>,
    /// Whether the tool changes the world; a tool that does not say is
    /// destructive.
    destructive: bool,
    idempotent: bool,
}

impl Parse for ToolOptions {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut options = ToolOptions::default();
        // `destructive` and `read_only` as given, with the option that set it.
        let mut destructive: Option<(bool, &'static str)> = None;
        let mut idempotent = None;
        let mut set_destructive = |meta: &Meta, option: &'static str, value: bool| match destructive
        {
            Some((_, earlier)) => Err(syn::Error::new_spanned(
                meta,
                if earlier == option {
                    format!("`{option}` is given twice")
                } else {
                    format!("give either `{earlier}` or `{option}`, not both")
                },
            )),
            None => {
                destructive = Some((value, option));
                Ok(())
            }
        };
        let metas = Punctuated::<Meta, Token![,]>::parse_terminated(input)?;
        for meta in &metas {
            match meta {
                Meta::Path(path) if path.is_ident("destructive") => {
                    set_destructive(meta, "destructive", true)?;
                }
                Meta::Path(path) if path.is_ident("read_only") => {
                    set_destructive(meta, "read_only", false)?;
                }
                Meta::Path(path) if path.is_ident("idempotent") => {
                    set_once(&mut idempotent, meta, "idempotent", true)?;
                }
                Meta::NameValue(nv) if nv.path.is_ident("name") => {
                    set_once(&mut options.name, meta, "name", string_literal(&nv.value)?)?;
                }
                Meta::NameValue(nv) if nv.path.is_ident("description") => {
                    let description = string_literal(&nv.value)?;
                    set_once(&mut options.description, meta, "description", description)?;
                }
                Meta::NameValue(nv) if nv.path.is_ident("destructive") => {
                    set_destructive(meta, "destructive", bool_literal(&nv.value)?)?;
                }
                Meta::NameValue(nv) if nv.path.is_ident("read_only") => {
                    set_destructive(meta, "read_only", !bool_literal(&nv.value)?)?;
                }
                Meta::NameValue(nv) if nv.path.is_ident("idempotent") => {
                    set_once(
                        &mut idempotent,
                        meta,
                        "idempotent",
                        bool_literal(&nv.value)?,
                    )?;
                }
                other => {
                    return Err(syn::Error::new_spanned(
                        other,
                        "unknown #[tool] option; expected `name = \"..\"`, \
                         `description = \"..\"`, `read_only`, `destructive = false`, \
                         `destructive` or `idempotent`",
                    ));
                }
            }
        }
        // A tool that does not say counts as destructive.
        options.destructive = destructive.is_none_or(|(value, _)| value);
        options.idempotent = idempotent.unwrap_or(false);
        Ok(options)
    }
}

/// Store `value` in `slot`, or fail when the option was already given.
fn set_once<T>(slot: &mut Option<T>, meta: &Meta, option: &str, value: T) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new_spanned(
            meta,
            format!("`{option}` is given twice"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

fn string_literal(expr: &Expr) -> syn::Result<LitStr> {
    match expr {
        Expr::Lit(lit) => match &lit.lit {
            Lit::Str(s) => Ok(s.clone()),
            _ => Err(syn::Error::new_spanned(expr, "expected a string literal")),
        },
        _ => Err(syn::Error::new_spanned(expr, "expected a string literal")),
    }
}

fn bool_literal(expr: &Expr) -> syn::Result<bool> {
    match expr {
        Expr::Lit(lit) => match &lit.lit {
            Lit::Bool(b) => Ok(b.value),
            _ => Err(syn::Error::new_spanned(expr, "expected `true` or `false`")),
        },
        _ => Err(syn::Error::new_spanned(expr, "expected `true` or `false`")),
    }
}

/// The first paragraph of the doc comments in `attrs`, joined into one line.
fn doc_summary(attrs: &[syn::Attribute]) -> Option<String> {
    let mut lines = Vec::new();
    for attr in attrs {
        if !attr.path().is_ident("doc") {
            continue;
        }
        if let Meta::NameValue(nv) = &attr.meta
            && let Ok(lit) = string_literal(&nv.value)
        {
            let line = lit.value().trim().to_owned();
            if line.is_empty() && !lines.is_empty() {
                break;
            }
            if !line.is_empty() {
                lines.push(line);
            }
        }
    }
    (!lines.is_empty()).then(|| lines.join(" "))
}

/// Turns a function into a Loom tool.
///
/// Every parameter becomes a property of the tool's JSON arguments object;
/// parameter types must implement `serde::Deserialize` and
/// `schemars::JsonSchema`, and `Option<T>` parameters are optional. The
/// function returns any `serde::Serialize` value, or `Result<T, E>` where
/// `E: Into<loom_sdk::ToolError>`.
///
/// Options:
///
/// * `name = "..."`: the tool's name (default: the function's name);
/// * `description = "..."`: what the model reads (default: the first
///   paragraph of the doc comment; one of the two is required);
/// * `read_only` (or `destructive = false`): the tool does not change the
///   world (it reads, computes, or fetches with GET). **A tool that does not
///   say counts as destructive**: permission modes may ask before it runs, so
///   mark every tool that only reads. `destructive` (or `destructive = true`,
///   `read_only = false`) states the default explicitly; give either
///   `destructive` or `read_only`, not both;
/// * `idempotent` (or `idempotent = true`): repeating a call with the same
///   arguments has no further effect.
///
/// A parameter may carry `#[arg(description = "...")]`.
///
/// ```ignore
/// #[loom_sdk::tool(description = "Look a word up in the dictionary", read_only, idempotent)]
/// fn define(word: String) -> String { /* ... */ }
///
/// #[loom_sdk::tool(description = "Delete a file")] // destructive: the default
/// fn delete(path: String) -> Result<(), loom_sdk::ToolError> { /* ... */ }
/// ```
#[proc_macro_attribute]
pub fn tool(attr: TokenStream, item: TokenStream) -> TokenStream {
    let options = syn::parse_macro_input!(attr as ToolOptions);
    let function = syn::parse_macro_input!(item as ItemFn);
    match expand_tool(options, function) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn expand_tool(
    options: ToolOptions,
    mut function: ItemFn,
) -> syn::Result<proc_macro2::TokenStream> {
    let fn_name = function.sig.ident.clone();
    if function.sig.asyncness.is_some() {
        return Err(syn::Error::new_spanned(
            function.sig.asyncness,
            "#[tool] functions must be synchronous",
        ));
    }
    if !function.sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &function.sig.generics,
            "#[tool] functions cannot be generic",
        ));
    }
    let tool_name = options
        .name
        .map(|n| n.value())
        .unwrap_or_else(|| fn_name.to_string());
    if tool_name.is_empty()
        || tool_name.len() > 64
        || !tool_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(syn::Error::new_spanned(
            &fn_name,
            format!("tool name `{tool_name}` must be 1-64 characters of [a-zA-Z0-9_-]"),
        ));
    }
    let description = match options.description {
        Some(d) => d.value(),
        None => doc_summary(&function.attrs).ok_or_else(|| {
            syn::Error::new_spanned(
                &fn_name,
                "a tool needs a description: add `description = \"...\"` or a doc comment",
            )
        })?,
    };

    let mut field_idents = Vec::new();
    let mut fields = Vec::new();
    for input in function.sig.inputs.iter_mut() {
        let FnArg::Typed(typed) = input else {
            return Err(syn::Error::new_spanned(
                input,
                "#[tool] functions cannot take `self`",
            ));
        };
        let Pat::Ident(pat) = &*typed.pat else {
            return Err(syn::Error::new_spanned(
                &typed.pat,
                "#[tool] parameters must be plain names",
            ));
        };
        if let Type::Reference(_) = &*typed.ty {
            return Err(syn::Error::new_spanned(
                &typed.ty,
                "#[tool] parameters must be owned types (String, not &str)",
            ));
        }
        let mut docs = Vec::new();
        let mut kept = Vec::new();
        for attr in typed.attrs.drain(..) {
            if attr.path().is_ident("arg") {
                let mut description = None;
                attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident("description") {
                        description = Some(meta.value()?.parse::<LitStr>()?);
                        Ok(())
                    } else {
                        Err(meta.error("expected `description = \"...\"`"))
                    }
                })?;
                if let Some(d) = description {
                    docs.push(d);
                }
            } else {
                kept.push(attr);
            }
        }
        typed.attrs = kept;
        let ident = pat.ident.clone();
        let ty = &typed.ty;
        field_idents.push(ident.clone());
        fields.push(quote! { #(#[doc = #docs])* #ident: #ty });
    }

    let returns_result = match &function.sig.output {
        ReturnType::Default => false,
        ReturnType::Type(_, ty) => match &**ty {
            Type::Path(path) => path
                .path
                .segments
                .last()
                .is_some_and(|segment| segment.ident == "Result"),
            _ => false,
        },
    };
    let call = if returns_result {
        quote! { #fn_name(#(#field_idents),*).map_err(::core::convert::Into::<::loom_sdk::ToolError>::into)? }
    } else {
        quote! { #fn_name(#(#field_idents),*) }
    };

    let vis = &function.vis;
    let marker = format_ident!("__loom_tool_{}", fn_name);
    let args = Ident::new("__LoomToolArguments", Span::call_site());
    let destructive = options.destructive;
    let idempotent = options.idempotent;
    Ok(quote! {
        #function

        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #vis struct #marker;

        const _: () = {
            #[derive(::loom_sdk::__private::serde::Deserialize, ::loom_sdk::__private::schemars::JsonSchema)]
            #[serde(crate = "::loom_sdk::__private::serde", deny_unknown_fields)]
            #[schemars(crate = "::loom_sdk::__private::schemars")]
            #[allow(non_camel_case_types)]
            struct #args { #(#fields),* }

            impl ::loom_sdk::Tool for #marker {
                const NAME: &'static str = #tool_name;

                fn spec() -> ::loom_sdk::ToolSpec {
                    ::loom_sdk::__private::spec(
                        #tool_name,
                        #description,
                        ::loom_sdk::__private::parameters_schema::<#args>(),
                        #destructive,
                        #idempotent,
                    )
                }

                fn invoke(arguments: &str) -> ::core::result::Result<::std::string::String, ::loom_sdk::ToolError> {
                    let #args { #(#field_idents),* } =
                        ::loom_sdk::__private::parse_arguments::<#args>(#tool_name, arguments)?;
                    let output = #call;
                    ::loom_sdk::__private::output_json(&output)
                }
            }
        };
    })
}

/// The list of tool functions given to [`export_tools!`].
struct ToolList(Punctuated<Path, Token![,]>);

impl Parse for ToolList {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        Ok(ToolList(Punctuated::parse_terminated(input)?))
    }
}

/// Exports the given `#[tool]` functions as this component's tools.
///
/// Call it once per component, at the crate root: `loom_sdk::export_tools!(add, greet);`.
#[proc_macro]
pub fn export_tools(input: TokenStream) -> TokenStream {
    let ToolList(paths) = syn::parse_macro_input!(input as ToolList);
    if paths.is_empty() {
        return syn::Error::new(Span::call_site(), "export_tools! needs at least one tool")
            .to_compile_error()
            .into();
    }
    let markers: Vec<Path> = paths
        .iter()
        .map(|path| {
            let mut marker = path.clone();
            if let Some(last) = marker.segments.last_mut() {
                last.ident = format_ident!("__loom_tool_{}", last.ident);
            }
            marker
        })
        .collect();
    quote! {
        #[doc(hidden)]
        struct __LoomExportedTools;

        impl ::loom_sdk::bindings::exports::loom::plugin::tool::Guest for __LoomExportedTools {
            fn list() -> ::std::vec::Vec<::loom_sdk::ToolSpec> {
                ::std::vec![#(<#markers as ::loom_sdk::Tool>::spec()),*]
            }

            fn invoke(
                name: ::std::string::String,
                arguments: ::std::string::String,
            ) -> ::core::result::Result<::std::string::String, ::loom_sdk::ToolError> {
                #(
                    if name == <#markers as ::loom_sdk::Tool>::NAME {
                        return <#markers as ::loom_sdk::Tool>::invoke(&arguments);
                    }
                )*
                ::core::result::Result::Err(::loom_sdk::ToolError::UnknownTool(name))
            }
        }

        ::loom_sdk::bindings::__export_tool_plugin!(__LoomExportedTools with_types_in ::loom_sdk::bindings);
    }
    .into()
}
