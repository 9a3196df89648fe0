//! `#[derive(Event)]` for herald: maps each variant of an enum to a topic and
//! generates the payload encoding and decoding; `#[derive(EventSchema)]`
//! describes each variant's payload as JSON Schema through schemars.
//!
//! Owns only code generation; the contract it implements is
//! `herald::Event`, documented there. Topics are checked at compile time
//! (lowercase dot-separated segments of `[a-z0-9_-]`, 1–255 characters, no
//! two variants on one topic).
//!
//! Each struct variant gets two private helper structs (one serializing by
//! reference, one deserializing owned values) carrying the fields'
//! `#[serde(...)]` attributes, so `rename`, `default`, `skip_serializing_if`,
//! `with` and friends apply to the payload without the enum deriving serde.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::punctuated::Punctuated;
use syn::{
    parse_macro_input, Attribute, Data, DeriveInput, Error, Expr, ExprLit, Fields, Ident, Lit,
    Meta, Token, Type,
};

const MAX_TOPIC_LEN: usize = 255;

/// Derive `herald::Event` for an enum; see the trait for the attributes.
#[proc_macro_derive(Event, attributes(event, serde))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(Error::into_compile_error)
        .into()
}

/// Derive `herald::EventSchema` (beside `Event`): each variant's payload as
/// JSON Schema, from its fields and their `#[serde(...)]` and
/// `#[schemars(...)]` attributes; field types implement `JsonSchema`.
#[proc_macro_derive(EventSchema, attributes(event, serde, schemars))]
pub fn derive_event_schema(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand_schema(&input)
        .unwrap_or_else(Error::into_compile_error)
        .into()
}

/// The `impl herald::EventSchema`: the variants' schemas in declaration
/// order, which is `Event::TOPICS`'s.
fn expand_schema(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let name = &input.ident;
    let data = enum_data(input)?;
    let mut schemas = Vec::new();
    for (i, variant) in data.variants.iter().enumerate() {
        let title = format!("{name}::{}", variant.ident);
        let schema = variant_schema(&title, &variant.fields)?;
        schemas.push(quote! { (__topics[#i], #schema) });
    }
    Ok(quote! {
        impl ::herald::EventSchema for #name {
            fn schemas() -> ::std::vec::Vec<(&'static str, ::herald::__private::serde_json::Value)> {
                let __topics = <Self as ::herald::Event>::TOPICS;
                ::std::vec![#(#schemas),*]
            }
        }
    })
}

/// The expression building one variant's payload schema.
fn variant_schema(title: &str, fields: &Fields) -> syn::Result<TokenStream2> {
    match fields {
        Fields::Unit => Ok(quote! { ::herald::__private::payload_schema::<()>(#title) }),
        Fields::Unnamed(f) => {
            let types: Vec<&Type> = f.unnamed.iter().map(|f| &f.ty).collect();
            let ty = if types.len() == 1 {
                quote! { #(#types)* }
            } else {
                quote! { (#(#types),*) }
            };
            Ok(quote! { ::herald::__private::payload_schema::<#ty>(#title) })
        }
        Fields::Named(f) => {
            let mut fields = Vec::new();
            for (i, field) in f.named.iter().enumerate() {
                let (_, de_attrs, _) = split_serde_attrs(&field.attrs, &field.ty, i)?;
                let schemars_attrs = field.attrs.iter().filter(|a| a.path().is_ident("schemars"));
                let (n, ty) = (&field.ident, &field.ty);
                fields.push(quote! { #(#de_attrs)* #(#schemars_attrs)* #n: #ty });
            }
            Ok(quote! {{
                #[derive(::herald::__private::schemars::JsonSchema)]
                #[schemars(crate = "::herald::__private::schemars")]
                #[allow(dead_code)]
                struct __Payload { #(#fields,)* }
                ::herald::__private::payload_schema::<__Payload>(#title)
            }})
        }
    }
}

/// The enum `input` is, with the derive's shape rules checked.
fn enum_data(input: &DeriveInput) -> syn::Result<&syn::DataEnum> {
    let name = &input.ident;
    let Data::Enum(data) = &input.data else {
        return Err(Error::new_spanned(
            name,
            "#[derive(Event)] works on enums: one variant per topic",
        ));
    };
    if !input.generics.params.is_empty() {
        return Err(Error::new_spanned(
            &input.generics,
            "#[derive(Event)] does not support generic enums",
        ));
    }
    if data.variants.is_empty() {
        return Err(Error::new_spanned(
            name,
            "an Event enum needs at least one variant",
        ));
    }
    Ok(data)
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let name = &input.ident;
    let data = enum_data(input)?;
    let options = EventAttr::parse(&input.attrs)?;
    if options.name.is_some() || options.topic.is_some() {
        return Err(Error::new_spanned(
            name,
            "on the enum, #[event] takes only `prefix`",
        ));
    }
    let prefix = options.prefix.unwrap_or_else(|| {
        let base = name.to_string();
        let base = base
            .strip_suffix("Event")
            .filter(|b| !b.is_empty())
            .unwrap_or(&base);
        snake_case(base)
    });

    let mut topics = Vec::new();
    let mut topic_arms = Vec::new();
    let mut encode_arms = Vec::new();
    let mut decode_arms = Vec::new();
    for variant in &data.variants {
        let attr = EventAttr::parse(&variant.attrs)?;
        if attr.prefix.is_some() {
            return Err(Error::new_spanned(
                &variant.ident,
                "on a variant, #[event] takes `name` or `topic`",
            ));
        }
        let topic = match (attr.topic, attr.name) {
            (Some(_), Some(_)) => {
                return Err(Error::new_spanned(
                    &variant.ident,
                    "give `name` or `topic`, not both",
                ))
            }
            (Some(t), None) => t,
            (None, name) => {
                let name = name.unwrap_or_else(|| snake_case(&variant.ident.to_string()));
                if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}.{name}")
                }
            }
        };
        if let Err(why) = check_topic(&topic) {
            return Err(Error::new_spanned(
                &variant.ident,
                format!("topic `{topic}` is invalid: {why}"),
            ));
        }
        if topics.contains(&topic) {
            return Err(Error::new_spanned(
                &variant.ident,
                format!("two variants map to topic `{topic}`"),
            ));
        }
        let v = &variant.ident;
        topic_arms.push(quote! { Self::#v { .. } => #topic });
        let (encode, decode) = variant_code(v, &variant.fields)?;
        encode_arms.push(encode);
        decode_arms.push(quote! { #topic => #decode });
        topics.push(topic);
    }
    let type_name = name.to_string();

    Ok(quote! {
        impl ::herald::Event for #name {
            const TOPICS: &'static [&'static str] = &[#(#topics),*];

            fn topic(&self) -> &'static str {
                match self { #(#topic_arms,)* }
            }

            #[allow(clippy::needless_borrow)]
            fn to_payload(&self) -> ::herald::Result<::herald::Payload> {
                match self { #(#encode_arms)* }
            }

            fn from_envelope(envelope: &::herald::Envelope) -> ::herald::Result<Self> {
                match envelope.topic().as_str() {
                    #(#decode_arms,)*
                    other => ::std::result::Result::Err(::herald::Error::new(
                        ::herald::ErrorCode::NotFound,
                        ::std::format!("topic `{}` is not a {} topic", other, #type_name),
                    )),
                }
            }
        }

        impl ::std::iter::IntoIterator for #name {
            type Item = #name;
            type IntoIter = ::std::iter::Once<#name>;
            fn into_iter(self) -> Self::IntoIter {
                ::std::iter::once(self)
            }
        }
    })
}

/// The encode match arm and the decode expression of one variant.
fn variant_code(v: &Ident, fields: &Fields) -> syn::Result<(TokenStream2, TokenStream2)> {
    match fields {
        Fields::Unit => Ok((
            quote! { Self::#v => ::std::result::Result::Ok(::herald::Payload::null()), },
            quote! { ::std::result::Result::Ok(Self::#v) },
        )),
        Fields::Unnamed(f) => {
            if let Some(field) = f.unnamed.iter().find(|f| has_serde(&f.attrs)) {
                return Err(Error::new_spanned(
                    field,
                    "#[serde] on tuple-variant fields is not supported; use a struct variant",
                ));
            }
            let binds: Vec<Ident> = (0..f.unnamed.len())
                .map(|i| format_ident!("__f{}", i))
                .collect();
            let types: Vec<&Type> = f.unnamed.iter().map(|f| &f.ty).collect();
            if binds.len() == 1 {
                let b = &binds[0];
                Ok((
                    quote! { Self::#v(#b) => ::herald::Payload::json(#b), },
                    quote! { envelope.decode().map(Self::#v) },
                ))
            } else {
                Ok((
                    quote! { Self::#v(#(#binds),*) => ::herald::Payload::json(&(#(#binds),*)), },
                    quote! {{
                        let (#(#binds),*): (#(#types),*) = envelope.decode()?;
                        ::std::result::Result::Ok(Self::#v(#(#binds),*))
                    }},
                ))
            }
        }
        Fields::Named(f) => {
            let names: Vec<&Ident> = f
                .named
                .iter()
                .map(|f| f.ident.as_ref().expect("named"))
                .collect();
            let types: Vec<&Type> = f.named.iter().map(|f| &f.ty).collect();
            let mut ser_fields = Vec::new();
            let mut de_fields = Vec::new();
            let mut wrappers = Vec::new();
            for (i, field) in f.named.iter().enumerate() {
                let (ser_attrs, de_attrs, wrap) = split_serde_attrs(&field.attrs, &field.ty, i)?;
                let (n, ty) = (names[i], types[i]);
                ser_fields.push(quote! { #(#ser_attrs)* #n: &'__herald #ty });
                de_fields.push(quote! { #(#de_attrs)* #n: #ty });
                wrappers.extend(wrap);
            }
            let encode = quote! {
                Self::#v { #(#names),* } => {
                    #(#wrappers)*
                    #[derive(::herald::__private::serde::Serialize)]
                    #[serde(crate = "::herald::__private::serde")]
                    struct __Payload<'__herald> { #(#ser_fields,)* }
                    ::herald::Payload::json(&__Payload { #(#names),* })
                }
            };
            let decode = quote! {{
                #[derive(::herald::__private::serde::Deserialize)]
                #[serde(crate = "::herald::__private::serde")]
                struct __Payload { #(#de_fields,)* }
                let __Payload { #(#names),* } = envelope.decode()?;
                ::std::result::Result::Ok(Self::#v { #(#names),* })
            }};
            Ok((encode, decode))
        }
    }
}

fn has_serde(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| a.path().is_ident("serde"))
}

/// Split a field's `#[serde(...)]` items into those for the by-reference
/// serializing helper and those for the deserializing helper. Items that
/// name a function taking the field (`skip_serializing_if`, `serialize_with`,
/// `with`) get a wrapper that dereferences once, since the serializing
/// helper holds `&T`.
fn split_serde_attrs(
    attrs: &[Attribute],
    ty: &Type,
    index: usize,
) -> syn::Result<(Vec<TokenStream2>, Vec<TokenStream2>, Vec<TokenStream2>)> {
    let (mut ser, mut de, mut wrappers) = (Vec::new(), Vec::new(), Vec::new());
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let items = attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)?;
        for item in items {
            let key = item
                .path()
                .get_ident()
                .map(|i| i.to_string())
                .unwrap_or_default();
            match key.as_str() {
                "skip_serializing_if" => {
                    let f = path_value(&item)?;
                    let w = format_ident!("__herald_skip_{}", index);
                    let wname = w.to_string();
                    wrappers.push(quote! {
                        #[allow(non_snake_case)]
                        fn #w(v: &&#ty) -> bool { #f(*v) }
                    });
                    ser.push(quote! { #[serde(skip_serializing_if = #wname)] });
                }
                "serialize_with" | "with" => {
                    let f = path_value(&item)?;
                    let w = format_ident!("__herald_ser_{}", index);
                    let wname = w.to_string();
                    let call = if key == "with" {
                        quote! { #f::serialize }
                    } else {
                        quote! { #f }
                    };
                    wrappers.push(quote! {
                        #[allow(non_snake_case)]
                        fn #w<S: ::herald::__private::serde::Serializer>(v: &&#ty, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                            #call(*v, s)
                        }
                    });
                    ser.push(quote! { #[serde(serialize_with = #wname)] });
                    if key == "with" {
                        let d = format!("{}::deserialize", quote!(#f).to_string().replace(' ', ""));
                        de.push(quote! { #[serde(deserialize_with = #d)] });
                    }
                }
                "deserialize_with" | "default" | "alias" => de.push(quote! { #[serde(#item)] }),
                _ => {
                    ser.push(quote! { #[serde(#item)] });
                    de.push(quote! { #[serde(#item)] });
                }
            }
        }
    }
    Ok((ser, de, wrappers))
}

/// The path in `key = "path"`.
fn path_value(item: &Meta) -> syn::Result<syn::Path> {
    match item {
        Meta::NameValue(nv) => match &nv.value {
            Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }) => s.parse(),
            other => Err(Error::new_spanned(
                other,
                "expected a string naming a function",
            )),
        },
        other => Err(Error::new_spanned(other, "expected `key = \"path\"`")),
    }
}

/// The `#[event(...)]` options on the enum or a variant.
#[derive(Default)]
struct EventAttr {
    prefix: Option<String>,
    name: Option<String>,
    topic: Option<String>,
}

impl EventAttr {
    fn parse(attrs: &[Attribute]) -> syn::Result<Self> {
        let mut out = EventAttr::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
            attr.parse_nested_meta(|meta| {
                let slot = if meta.path.is_ident("prefix") {
                    &mut out.prefix
                } else if meta.path.is_ident("name") {
                    &mut out.name
                } else if meta.path.is_ident("topic") {
                    &mut out.topic
                } else {
                    return Err(
                        meta.error("unknown #[event] option; expected `prefix`, `name` or `topic`")
                    );
                };
                let value: syn::LitStr = meta.value()?.parse()?;
                *slot = Some(value.value());
                Ok(())
            })?;
        }
        if let Some(p) = &out.prefix {
            if !p.is_empty() {
                check_topic(p).map_err(|why| {
                    Error::new(Span::call_site(), format!("prefix `{p}` is invalid: {why}"))
                })?;
            }
        }
        Ok(out)
    }
}

/// herald's topic rule, checked at compile time.
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
        return Err(format!("a topic is 1–{MAX_TOPIC_LEN} characters"));
    }
    for segment in topic.split('.') {
        if segment.is_empty() {
            return Err("empty segment".into());
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
        {
            return Err(format!("character {c:?} is not in [a-z0-9_-]"));
        }
    }
    Ok(())
}

/// `UserSignedUp` → `user_signed_up`, `HTTPRequest` → `http_request`.
fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|j| chars[j]);
            let next = chars.get(i + 1);
            let boundary = match prev {
                Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_uppercase() => next.is_some_and(|n| n.is_lowercase()),
                _ => false,
            };
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_splits_words_and_acronyms() {
        assert_eq!(snake_case("Created"), "created");
        assert_eq!(snake_case("SignedUp"), "signed_up");
        assert_eq!(snake_case("HTTPRequest"), "http_request");
        assert_eq!(snake_case("Order2Paid"), "order2_paid");
        assert_eq!(snake_case("already_snake"), "already_snake");
    }

    #[test]
    fn topics_are_checked() {
        assert!(check_topic("user.created").is_ok());
        assert!(check_topic("a-b_c.d9").is_ok());
        assert!(check_topic("User.created").is_err());
        assert!(check_topic("user..created").is_err());
        assert!(check_topic("").is_err());
        assert!(check_topic(&"a".repeat(256)).is_err());
    }
}
