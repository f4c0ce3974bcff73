//! Label selectors (`app=web,tier in (fe,be),!canary`) with Kubernetes' syntax, errors
//! and matching, and label key/value validation.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::error::{aggregate, Error, FieldError};

/// How a [`Requirement`] relates a label to its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    /// `key=value` or `key==value`: the label is present and equal to the value.
    Equals,
    /// `key!=value`: the label is absent or different from the value.
    NotEquals,
    /// `key in (a,b)`: the label is present and one of the values.
    In,
    /// `key notin (a,b)`: the label is absent or none of the values.
    NotIn,
    /// `key`: the label is present.
    Exists,
    /// `!key`: the label is absent.
    DoesNotExist,
    /// `key>5`: the label is present and an integer greater than the value.
    GreaterThan,
    /// `key<5`: the label is present and an integer less than the value.
    LessThan,
}

/// One condition on one label key, such as `tier in (fe,be)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Requirement {
    key: String,
    operator: Operator,
    /// Sorted and without duplicates.
    values: Vec<String>,
}

impl Requirement {
    /// A validated requirement, with the rules Kubernetes applies.
    ///
    /// # Errors
    ///
    /// [`Error::BadRequest`] when the key is not a valid label key, a value is not a valid
    /// label value, or the number of values does not suit the operator (`in`/`notin`
    /// need at least one, `=`/`!=`/`>`/`<` exactly one, `exists`/`!` none; `>`/`<` need
    /// an integer).
    pub fn new<S: Into<String>>(
        key: impl Into<String>,
        operator: Operator,
        values: impl IntoIterator<Item = S>,
    ) -> Result<Self, Error> {
        let key = key.into();
        let mut values: Vec<String> = values.into_iter().map(Into::into).collect();
        values.sort();
        values.dedup();
        let mut errors = Vec::new();
        if let Err(e) = validate_label_key(&key) {
            errors.push(e.under("key"));
        }
        let count_problem = match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                Some("for 'in', 'notin' operators, values set can't be empty")
            }
            Operator::Equals | Operator::NotEquals if values.len() != 1 => {
                Some("exact-match compatibility requires one single value")
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                Some("values set must be empty for exists and does not exist")
            }
            Operator::GreaterThan | Operator::LessThan if values.len() != 1 => {
                Some("for 'Gt', 'Lt' operators, exactly one value is required")
            }
            _ => None,
        };
        if let Some(problem) = count_problem {
            errors.push(FieldError::invalid(
                "values",
                serde_json::Value::from(values.clone()),
                problem,
            ));
        }
        for (i, value) in values.iter().enumerate() {
            if matches!(operator, Operator::GreaterThan | Operator::LessThan)
                && value.parse::<i64>().is_err()
            {
                errors.push(FieldError::invalid(
                    format!("values[{i}]"),
                    value.as_str(),
                    "for 'Gt', 'Lt' operators, the value must be an integer",
                ));
            }
            if let Err(e) = validate_label_value(value) {
                errors.push(e.under(&format!("values[{i}][{key}]")));
            }
        }
        if errors.is_empty() {
            Ok(Self {
                key,
                operator,
                values,
            })
        } else {
            Err(Error::bad_request(aggregate(&errors)))
        }
    }

    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The operator.
    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The values, sorted and without duplicates (empty for `exists` and `!`).
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether a set of labels satisfies this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        let listed = |v: &String| self.values.binary_search(v).is_ok();
        match self.operator {
            Operator::Equals | Operator::In => value.is_some_and(listed),
            Operator::NotEquals | Operator::NotIn => !value.is_some_and(listed),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(actual), [bound]) = (value, self.values.as_slice()) else {
                    return false;
                };
                match (actual.parse::<i64>(), bound.parse::<i64>()) {
                    (Ok(actual), Ok(bound)) if self.operator == Operator::GreaterThan => {
                        actual > bound
                    }
                    (Ok(actual), Ok(bound)) => actual < bound,
                    _ => false,
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    /// `key=v`, `key!=v`, `key in (a,b)`, `key notin (a,b)`, `key`, `!key`, `key>1`,
    /// `key<1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values = self.values.join(",");
        match self.operator {
            Operator::Equals => write!(f, "{}={values}", self.key),
            Operator::NotEquals => write!(f, "{}!={values}", self.key),
            Operator::In => write!(f, "{} in ({values})", self.key),
            Operator::NotIn => write!(f, "{} notin ({values})", self.key),
            Operator::Exists => f.write_str(&self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
            Operator::GreaterThan => write!(f, "{}>{values}", self.key),
            Operator::LessThan => write!(f, "{}<{values}", self.key),
        }
    }
}

/// A label selector: requirements that must all hold.
///
/// Parse it from Kubernetes' string syntax (the `?labelSelector=` query parameter and
/// `kubectl -l`), or convert it from the structured `LabelSelector` of workload specs.
/// Its `Display` form is canonical: requirements sorted by key, `==` written `=`,
/// values sorted; it parses back to the same selector.
///
/// ```
/// use std::collections::BTreeMap;
/// use keelson_core::LabelSelector;
///
/// let selector: LabelSelector = "app=web, tier in (fe,be), !canary".parse()?;
/// let labels = BTreeMap::from([("app".to_string(), "web".to_string()), ("tier".to_string(), "fe".to_string())]);
/// assert!(selector.matches(&labels));
/// assert_eq!(selector.to_string(), "app=web,!canary,tier in (be,fe)");
///
/// let err = LabelSelector::parse("app in (web").unwrap_err();
/// assert_eq!(err.to_string(), "unable to parse requirement: found '', expected: ',' or ')'");
/// # Ok::<(), keelson_core::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    nothing: bool,
}

impl LabelSelector {
    /// The selector that matches every set of labels (the empty selector).
    pub fn everything() -> Self {
        Self::default()
    }

    /// The selector that matches nothing: what a missing (`null`) structured selector
    /// means in Kubernetes. It displays as the empty string.
    pub fn nothing() -> Self {
        Self {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// Parses Kubernetes' label selector syntax:
    ///
    /// ```text
    /// selector    := requirement ( "," requirement )*  |  ""
    /// requirement := [ "!" ] KEY
    ///              | KEY ( "=" | "==" | "!=" | ">" | "<" ) VALUE
    ///              | KEY ( "in" | "notin" ) "(" VALUE ( "," VALUE )* ")"
    /// ```
    ///
    /// Whitespace between tokens is ignored. As in Kubernetes, an empty value is a valid
    /// value, so `a=` and `a in ()` (which means `a in ("")`) parse.
    ///
    /// # Errors
    ///
    /// [`Error::BadRequest`] with Kubernetes' messages, such as `unable to parse
    /// requirement: found '', expected: identifier` or `found ',', expected: !,
    /// identifier, or 'end of string'`.
    pub fn parse(selector: &str) -> Result<Self, Error> {
        let mut requirements = Parser::new(selector).parse().map_err(Error::bad_request)?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self {
            requirements,
            nothing: false,
        })
    }

    /// A selector requiring each label of the set (`k=v` for each entry); the empty set
    /// selects everything.
    ///
    /// # Errors
    ///
    /// [`Error::BadRequest`] when a key or value is not a valid label key or value.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Result<Self, Error> {
        let requirements = labels
            .iter()
            .map(|(k, v)| Requirement::new(k.as_str(), Operator::Equals, [v.as_str()]))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            requirements,
            nothing: false,
        })
    }

    /// Converts a structured selector (`matchLabels` and `matchExpressions`) as
    /// Kubernetes does; a selector with neither selects everything. For an optional
    /// selector, where `None` selects nothing, use [`LabelSelector::from_optional`].
    ///
    /// # Errors
    ///
    /// [`Error::BadRequest`] for an operator other than `In`, `NotIn`, `Exists` and
    /// `DoesNotExist` (`"Foo" is not a valid label selector operator`) or a requirement
    /// [`Requirement::new`] rejects (`In` with no values, an invalid key, ...).
    pub fn from_k8s(selector: &metav1::LabelSelector) -> Result<Self, Error> {
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::new(
                key.as_str(),
                Operator::Equals,
                [value.as_str()],
            )?);
        }
        for expr in selector.match_expressions.iter().flatten() {
            let operator = match expr.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(Error::bad_request(format!(
                        "{} is not a valid label selector operator",
                        crate::error::quote(other)
                    )))
                }
            };
            requirements.push(Requirement::new(
                expr.key.as_str(),
                operator,
                expr.values.iter().flatten().map(String::as_str),
            )?);
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self {
            requirements,
            nothing: false,
        })
    }

    /// Like [`LabelSelector::from_k8s`], with `None` selecting nothing, as a missing
    /// selector does in Kubernetes.
    ///
    /// # Errors
    ///
    /// As [`LabelSelector::from_k8s`].
    pub fn from_optional(selector: Option<&metav1::LabelSelector>) -> Result<Self, Error> {
        selector.map_or_else(|| Ok(Self::nothing()), Self::from_k8s)
    }

    /// Adds a requirement (keeping the requirements sorted by key).
    pub fn and(mut self, requirement: Requirement) -> Self {
        let at = self
            .requirements
            .partition_point(|r| r.key <= requirement.key);
        self.requirements.insert(at, requirement);
        self
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether this selector matches everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty() && !self.nothing
    }

    /// Whether this is the selector that matches nothing.
    pub fn is_nothing(&self) -> bool {
        self.nothing
    }

    /// Whether a set of labels satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether an object's labels satisfy every requirement (no labels is the empty set).
    pub fn matches_meta(&self, meta: &ObjectMeta) -> bool {
        match &meta.labels {
            Some(labels) => self.matches(labels),
            None => self.matches(&BTreeMap::new()),
        }
    }

    /// The value the selector requires for a label (`key=v`, `key==v` or `key in (v)`),
    /// if it requires exactly one.
    pub fn requires_exact_match(&self, key: &str) -> Option<&str> {
        let r = self.requirements.iter().find(|r| r.key == key)?;
        match (r.operator, r.values.as_slice()) {
            (Operator::Equals | Operator::In, [value]) => Some(value),
            _ => None,
        }
    }
}

impl fmt::Display for LabelSelector {
    /// The canonical string form: the requirements joined by commas.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl FromStr for LabelSelector {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&metav1::LabelSelector> for LabelSelector {
    type Error = Error;

    fn try_from(selector: &metav1::LabelSelector) -> Result<Self, Self::Error> {
        Self::from_k8s(selector)
    }
}

// ---------------------------------------------------------------------------------------
// Validation

const NAME_MAX_LEN: usize = 63;
const SUBDOMAIN_MAX_LEN: usize = 253;
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const SUBDOMAIN_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";

/// Checks a label key: an optional DNS subdomain prefix and `/`, then a name of at most
/// 63 characters matching `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
///
/// # Errors
///
/// A [`FieldError`] (`Invalid value: "key": <reasons>`, with no field path: place it
/// with [`FieldError::under`]) worded as Kubernetes words it.
pub fn validate_label_key(key: &str) -> Result<(), FieldError> {
    let problems = label_key_problems(key);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(FieldError::invalid("", key, &problems.join("; ")))
    }
}

/// Checks a label value: empty, or at most 63 characters matching
/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
///
/// # Errors
///
/// A [`FieldError`] as for [`validate_label_key`].
pub fn validate_label_value(value: &str) -> Result<(), FieldError> {
    let mut problems = Vec::new();
    if value.len() > NAME_MAX_LEN {
        problems.push(max_len(NAME_MAX_LEN));
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        problems.push(regex_error(
            LABEL_VALUE_MSG,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(FieldError::invalid("", value, &problems.join("; ")))
    }
}

fn label_key_problems(key: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let name = match key.split_once('/') {
        None => key,
        Some((_, name)) if name.contains('/') => {
            return vec![format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_MSG, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            )];
        }
        Some((prefix, name)) => {
            if prefix.is_empty() {
                problems.push("prefix part must be non-empty".to_owned());
            } else {
                problems.extend(
                    subdomain_problems(prefix)
                        .into_iter()
                        .map(|p| format!("prefix part {p}")),
                );
            }
            name
        }
    };
    if name.is_empty() {
        problems.push("name part must be non-empty".to_owned());
    } else if name.len() > NAME_MAX_LEN {
        problems.push(format!("name part {}", max_len(NAME_MAX_LEN)));
    }
    if !is_qualified_name_part(name) {
        problems.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    problems
}

fn subdomain_problems(value: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if value.len() > SUBDOMAIN_MAX_LEN {
        problems.push(max_len(SUBDOMAIN_MAX_LEN));
    }
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        match bytes {
            [] => false,
            [only] => edge(only),
            [first, middle @ .., last] => {
                edge(first) && edge(last) && middle.iter().all(|b| edge(b) || *b == b'-')
            }
        }
    };
    if !value.split('.').all(label_ok) {
        problems.push(regex_error(SUBDOMAIN_MSG, SUBDOMAIN_FMT, &["example.com"]));
    }
    problems
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`
fn is_qualified_name_part(s: &str) -> bool {
    let edge = |b: &u8| b.is_ascii_alphanumeric();
    match s.as_bytes() {
        [] => false,
        [only] => edge(only),
        [first, middle @ .., last] => {
            edge(first)
                && edge(last)
                && middle
                    .iter()
                    .all(|b| edge(b) || matches!(b, b'-' | b'_' | b'.'))
        }
    }
}

fn max_len(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// Kubernetes' wording for a failed pattern: the rule, examples, then the pattern.
fn regex_error(msg: &str, pattern: &str, examples: &[&str]) -> String {
    let mut s = format!("{msg} (e.g. ");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            s.push_str(" or ");
        }
        s.push('\'');
        s.push_str(example);
        s.push_str("', ");
    }
    s.push_str("regex used for validation is '");
    s.push_str(pattern);
    s.push_str("')");
    s
}

// ---------------------------------------------------------------------------------------
// Lexer and parser

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Error,
    End,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

fn keyword(s: &str) -> Option<Token> {
    Some(match s {
        ")" => Token::ClosedPar,
        "," => Token::Comma,
        "!" => Token::DoesNotExist,
        "==" => Token::DoubleEquals,
        "=" => Token::Equals,
        ">" => Token::GreaterThan,
        "in" => Token::In,
        "<" => Token::LessThan,
        "!=" => Token::NotEquals,
        "notin" => Token::NotIn,
        "(" => Token::OpenPar,
        _ => return None,
    })
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// Splits the input into tokens; always ends with `Token::End`.
fn lex(input: &str) -> Vec<(Token, String)> {
    let bytes = input.as_bytes();
    let mut pos = 0;
    let mut tokens = Vec::new();
    loop {
        while pos < bytes.len() && is_whitespace(bytes[pos]) {
            pos += 1;
        }
        if pos >= bytes.len() {
            tokens.push((Token::End, String::new()));
            return tokens;
        }
        let start = pos;
        if is_special(bytes[pos]) {
            // The longest run of special characters that is an operator.
            let mut best: Option<(Token, usize)> = None;
            while pos < bytes.len() && is_special(bytes[pos]) {
                pos += 1;
                match keyword(&input[start..pos]) {
                    Some(token) => best = Some((token, pos)),
                    None if best.is_some() => break,
                    None => {}
                }
            }
            match best {
                Some((token, end)) => {
                    pos = end;
                    tokens.push((token, input[start..end].to_owned()));
                }
                None => tokens.push((
                    Token::Error,
                    format!("error expected: keyword found '{}'", &input[start..pos]),
                )),
            }
        } else {
            while pos < bytes.len() && !is_special(bytes[pos]) && !is_whitespace(bytes[pos]) {
                pos += 1;
            }
            let word = &input[start..pos];
            tokens.push((keyword(word).unwrap_or(Token::Identifier), word.to_owned()));
        }
    }
}

/// Whether `in` and `notin` are keywords (after a key) or plain identifiers (as values
/// and keys).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    KeyAndOperator,
    Values,
}

struct Parser {
    tokens: Vec<(Token, String)>,
    position: usize,
}

const BINARY_OPERATORS: &str = "in, notin, =, ==, !=, gt, lt";

impl Parser {
    fn new(input: &str) -> Self {
        Self {
            tokens: lex(input),
            position: 0,
        }
    }

    fn token_at(&self, position: usize, context: Context) -> (Token, String) {
        let (token, literal) = self
            .tokens
            .get(position)
            .or(self.tokens.last())
            .cloned()
            .unwrap_or((Token::End, String::new()));
        match (context, token) {
            (Context::Values, Token::In | Token::NotIn) => (Token::Identifier, literal),
            _ => (token, literal),
        }
    }

    fn lookahead(&self, context: Context) -> (Token, String) {
        self.token_at(self.position, context)
    }

    fn consume(&mut self, context: Context) -> (Token, String) {
        let item = self.token_at(self.position, context);
        if self.position < self.tokens.len() {
            self.position += 1;
        }
        item
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, String> {
        let mut requirements = Vec::new();
        loop {
            let (token, literal) = self.lookahead(Context::Values);
            match token {
                Token::Identifier | Token::DoesNotExist => {
                    let requirement = self
                        .parse_requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    requirements.push(requirement);
                    let (token, literal) = self.consume(Context::Values);
                    match token {
                        Token::End => return Ok(requirements),
                        Token::Comma => {
                            let (next, literal) = self.lookahead(Context::Values);
                            if next != Token::Identifier && next != Token::DoesNotExist {
                                return Err(format!(
                                    "found '{literal}', expected: identifier after ','"
                                ));
                            }
                        }
                        _ => {
                            return Err(format!(
                                "found '{literal}', expected: ',' or 'end of string'"
                            ))
                        }
                    }
                }
                Token::End => return Ok(requirements),
                _ => {
                    return Err(format!(
                        "found '{literal}', expected: !, identifier, or 'end of string'"
                    ))
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, String> {
        let (key, operator) = self.parse_key_and_infer_operator()?;
        if let Some(operator) = operator {
            return requirement(key, operator, Vec::new());
        }
        let operator = self.parse_operator()?;
        let values = match operator {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        requirement(key, operator, values)
    }

    /// The key, and `exists` or `!` when the requirement ends after the key.
    fn parse_key_and_infer_operator(&mut self) -> Result<(String, Option<Operator>), String> {
        let (mut token, mut literal) = self.consume(Context::Values);
        let mut operator = None;
        if token == Token::DoesNotExist {
            operator = Some(Operator::DoesNotExist);
            (token, literal) = self.consume(Context::Values);
        }
        if token != Token::Identifier {
            return Err(format!("found '{literal}', expected: identifier"));
        }
        validate_label_key(&literal).map_err(|e| e.to_string())?;
        let (next, _) = self.lookahead(Context::Values);
        if matches!(next, Token::End | Token::Comma) && operator.is_none() {
            operator = Some(Operator::Exists);
        }
        Ok((literal, operator))
    }

    fn parse_operator(&mut self) -> Result<Operator, String> {
        let (token, literal) = self.consume(Context::KeyAndOperator);
        Ok(match token {
            Token::In => Operator::In,
            Token::NotIn => Operator::NotIn,
            Token::Equals | Token::DoubleEquals => Operator::Equals,
            Token::NotEquals => Operator::NotEquals,
            Token::GreaterThan => Operator::GreaterThan,
            Token::LessThan => Operator::LessThan,
            _ => return Err(format!("found '{literal}', expected: {BINARY_OPERATORS}")),
        })
    }

    /// `(a,b,c)`; empty entries are the empty value, so `()` is `("")`.
    fn parse_values(&mut self) -> Result<Vec<String>, String> {
        let (token, literal) = self.consume(Context::Values);
        if token != Token::OpenPar {
            return Err(format!("found '{literal}' expected: '('"));
        }
        let (token, literal) = self.lookahead(Context::Values);
        match token {
            Token::Identifier | Token::Comma => {
                let values = self.parse_identifiers_list()?;
                let (token, literal) = self.consume(Context::Values);
                if token != Token::ClosedPar {
                    return Err(format!("found '{literal}', expected: ')'"));
                }
                Ok(values)
            }
            Token::ClosedPar => {
                self.consume(Context::Values);
                Ok(vec![String::new()])
            }
            _ => Err(format!(
                "found '{literal}', expected: ',', ')' or identifier"
            )),
        }
    }

    /// A comma-separated list of possibly empty identifiers, up to (not including) `)`.
    fn parse_identifiers_list(&mut self) -> Result<Vec<String>, String> {
        let mut values = Vec::new();
        loop {
            let (token, literal) = self.consume(Context::Values);
            match token {
                Token::Identifier => {
                    values.push(literal);
                    let (next, literal) = self.lookahead(Context::Values);
                    match next {
                        Token::Comma => continue,
                        Token::ClosedPar => return Ok(values),
                        _ => return Err(format!("found '{literal}', expected: ',' or ')'")),
                    }
                }
                Token::Comma => {
                    if values.is_empty() {
                        values.push(String::new()); // "(,"
                    }
                    match self.lookahead(Context::Values).0 {
                        Token::ClosedPar => {
                            values.push(String::new()); // ",)"
                            return Ok(values);
                        }
                        Token::Comma => {
                            self.consume(Context::Values);
                            values.push(String::new()); // ",,"
                        }
                        _ => {}
                    }
                }
                _ => return Err(format!("found '{literal}', expected: ',', or identifier")),
            }
        }
    }

    /// The one value after `=`, `==`, `!=`, `>` or `<`; nothing means the empty value.
    fn parse_exact_value(&mut self) -> Result<Vec<String>, String> {
        if matches!(self.lookahead(Context::Values).0, Token::End | Token::Comma) {
            return Ok(vec![String::new()]);
        }
        let (token, literal) = self.consume(Context::Values);
        if token == Token::Identifier {
            Ok(vec![literal])
        } else {
            Err(format!("found '{literal}', expected: identifier"))
        }
    }
}

fn requirement(
    key: String,
    operator: Operator,
    values: Vec<String>,
) -> Result<Requirement, String> {
    Requirement::new(key, operator, values).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parse(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn parse_err(s: &str) -> String {
        match LabelSelector::parse(s) {
            Ok(sel) => panic!("{s:?} should not parse, got {sel}"),
            Err(e) => {
                assert_eq!(e.reason(), "BadRequest");
                e.to_string()
            }
        }
    }

    #[test]
    fn every_operator_parses() {
        let s = parse("a=b,c!=d,e in (x,y),f notin (z),g,!h,i==j,k>1,l<2");
        let ops: Vec<_> = s
            .requirements()
            .iter()
            .map(|r| (r.key(), r.operator()))
            .collect();
        assert_eq!(
            ops,
            [
                ("a", Operator::Equals),
                ("c", Operator::NotEquals),
                ("e", Operator::In),
                ("f", Operator::NotIn),
                ("g", Operator::Exists),
                ("h", Operator::DoesNotExist),
                ("i", Operator::Equals),
                ("k", Operator::GreaterThan),
                ("l", Operator::LessThan),
            ]
        );
        assert_eq!(
            s.to_string(),
            "a=b,c!=d,e in (x,y),f notin (z),g,!h,i=j,k>1,l<2"
        );
    }

    #[test]
    fn whitespace_between_tokens_is_ignored() {
        let s = parse("  a = b ,\tc  in  ( x , y ) ,  ! d ,e\n");
        assert_eq!(s.to_string(), "a=b,c in (x,y),!d,e");
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = parse("");
        assert!(s.is_empty());
        assert!(s.matches(&labels(&[])));
        assert!(parse("   ").is_empty());
        assert_eq!(s.to_string(), "");
    }

    #[test]
    fn display_is_canonical_and_parses_back() {
        let s = parse("z in (b,a,b), a==1, !m");
        assert_eq!(s.to_string(), "a=1,!m,z in (a,b)");
        assert_eq!(parse(&s.to_string()), s);
    }

    #[test]
    fn keys_may_have_a_dns_prefix_and_in_may_be_a_key_or_value() {
        let s = parse("example.com/app=web,in in (in,notin),notin");
        assert_eq!(s.to_string(), "example.com/app=web,in in (in,notin),notin");
    }

    #[test]
    fn empty_values_are_valid_values() {
        let s = parse("a=,b in (,x),c in (x,),d in (x,,y)");
        assert_eq!(s.requirements()[0].values(), [""]);
        assert_eq!(s.requirements()[1].values(), ["", "x"]);
        assert_eq!(s.requirements()[2].values(), ["", "x"]);
        assert_eq!(s.requirements()[3].values(), ["", "x", "y"]);
        assert!(s.requirements()[0].matches(&labels(&[("a", "")])));
    }

    #[test]
    fn set_based_selector_with_empty_parentheses_means_the_empty_value_as_in_kubernetes() {
        // Kubernetes' parser reads `()` as `("")`; only a structured selector or
        // `Requirement::new` can have an empty value set, and that is an error.
        let s = parse("a in ()");
        assert_eq!(s.requirements()[0].values(), [""]);
        assert_eq!(s.to_string(), "a in ()");
    }

    #[test]
    fn set_based_requirement_with_empty_value_list_is_an_error() {
        let err = Requirement::new("a", Operator::In, Vec::<String>::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty"
        );
        assert!(Requirement::new("a", Operator::NotIn, Vec::<String>::new()).is_err());
    }

    #[test]
    fn syntax_errors_use_kubernetes_messages() {
        let cases = [
            (
                "a in (b",
                "unable to parse requirement: found '', expected: ',' or ')'",
            ),
            (
                "a in b",
                "unable to parse requirement: found 'b' expected: '('",
            ),
            (
                "a in",
                "unable to parse requirement: found '' expected: '('",
            ),
            (
                "a in (=)",
                "unable to parse requirement: found '=', expected: ',', ')' or identifier",
            ),
            (
                "a in (b c)",
                "unable to parse requirement: found 'c', expected: ',' or ')'",
            ),
            (
                "a in (b,=)",
                "unable to parse requirement: found '=', expected: ',', or identifier",
            ),
            (
                "a b",
                "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt",
            ),
            ("a=b c", "found 'c', expected: ',' or 'end of string'"),
            ("a=b,", "found '', expected: identifier after ','"),
            ("a=b,,c", "found ',', expected: identifier after ','"),
            (
                ",a",
                "found ',', expected: !, identifier, or 'end of string'",
            ),
            (
                "=a",
                "found '=', expected: !, identifier, or 'end of string'",
            ),
            (
                "!",
                "unable to parse requirement: found '', expected: identifier",
            ),
            (
                "!=a",
                "found '!=', expected: !, identifier, or 'end of string'",
            ),
            (
                "a=(",
                "unable to parse requirement: found '(', expected: identifier",
            ),
            ("!a=b", "found '=', expected: ',' or 'end of string'"),
            ("a in (b)c", "found 'c', expected: ',' or 'end of string'"),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_err(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn invalid_keys_and_values_are_reported_with_kubernetes_validation_messages() {
        let err = parse_err("-a=b");
        assert_eq!(
            err,
            "unable to parse requirement: Invalid value: \"-a\": name part must consist of \
             alphanumeric characters, '-', '_' or '.', and must start and end with an \
             alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used \
             for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        );
        let err = parse_err("a=-b");
        assert!(
            err.starts_with("unable to parse requirement: values[0][a]: Invalid value: \"-b\": a valid label must be an empty string"),
            "{err}"
        );
        let long = "x".repeat(64);
        let err = parse_err(&format!("{long}=b"));
        assert!(
            err.contains("name part must be no more than 63 characters"),
            "{err}"
        );
        let err = parse_err(&format!("a={long}"));
        assert!(err.contains("must be no more than 63 characters"), "{err}");
        let err = parse_err("a>b");
        assert!(
            err.contains("for 'Gt', 'Lt' operators, the value must be an integer"),
            "{err}"
        );
    }

    #[test]
    fn label_key_validation_follows_kubernetes() {
        for ok in [
            "a",
            "A1",
            "a.b-c_d",
            "example.com/name",
            "a.b.c/N_1",
            &"x".repeat(63),
        ] {
            assert!(validate_label_key(ok).is_ok(), "{ok}");
        }
        let problems = |k: &str| validate_label_key(k).unwrap_err().message;
        assert!(problems("/a").contains("prefix part must be non-empty"));
        assert!(problems("Example.com/a").contains("prefix part a lowercase RFC 1123 subdomain"));
        assert!(problems("a/").contains("name part must be non-empty"));
        assert!(problems("a/b/c").contains("a qualified name must consist of"));
        assert!(problems(&format!("{}/a", "x".repeat(254)))
            .contains("prefix part must be no more than 253 characters"));
        assert!(problems("a_").contains("name part must consist of"));
        assert!(problems("").contains("name part must be non-empty"));
    }

    #[test]
    fn label_value_validation_follows_kubernetes() {
        for ok in ["", "a", "MyValue", "my_value", "1.2-3", &"x".repeat(63)] {
            assert!(validate_label_value(ok).is_ok(), "{ok}");
        }
        for bad in ["-a", "a-", "a b", "a/b", "é", &"x".repeat(64)] {
            assert!(validate_label_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_follows_kubernetes_semantics() {
        let l = labels(&[("app", "web"), ("tier", "fe"), ("replicas", "3")]);
        let yes = [
            "app=web",
            "app==web",
            "app!=db",
            "missing!=x",
            "tier in (fe,be)",
            "tier notin (be)",
            "missing notin (x)",
            "app",
            "!missing",
            "replicas>2",
            "replicas<4",
            "app=web,tier=fe",
        ];
        for s in yes {
            assert!(parse(s).matches(&l), "{s} should match");
        }
        let no = [
            "app=db",
            "missing=x",
            "app!=web",
            "tier in (be)",
            "missing in (x)",
            "tier notin (fe)",
            "missing",
            "!app",
            "replicas>3",
            "app>1",
            "missing<1",
            "app=web,tier=be",
        ];
        for s in no {
            assert!(!parse(s).matches(&l), "{s} should not match");
        }
    }

    #[test]
    fn structured_selectors_convert_as_kubernetes_converts_them() {
        let k8s = metav1::LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
            match_expressions: Some(vec![
                metav1::LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["fe".into(), "be".into()]),
                },
                metav1::LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
                metav1::LabelSelectorRequirement {
                    key: "env".into(),
                    operator: "NotIn".into(),
                    values: Some(vec!["dev".into()]),
                },
                metav1::LabelSelectorRequirement {
                    key: "team".into(),
                    operator: "Exists".into(),
                    values: Some(vec![]),
                },
            ]),
        };
        let s = LabelSelector::try_from(&k8s).unwrap();
        assert_eq!(
            s.to_string(),
            "app=web,!canary,env notin (dev),team,tier in (be,fe)"
        );
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "be"), ("team", "x")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "be")])));
    }

    #[test]
    fn structured_selector_edge_cases() {
        let empty = metav1::LabelSelector::default();
        assert!(LabelSelector::from_k8s(&empty)
            .unwrap()
            .matches(&labels(&[])));
        let nothing = LabelSelector::from_optional(None).unwrap();
        assert!(nothing.is_nothing());
        assert!(!nothing.matches(&labels(&[])));
        let bad_op = metav1::LabelSelector {
            match_expressions: Some(vec![metav1::LabelSelectorRequirement {
                key: "a".into(),
                operator: "Gt".into(),
                values: Some(vec!["1".into()]),
            }]),
            ..Default::default()
        };
        assert_eq!(
            LabelSelector::from_k8s(&bad_op).unwrap_err().to_string(),
            r#""Gt" is not a valid label selector operator"#
        );
        let empty_in = metav1::LabelSelector {
            match_expressions: Some(vec![metav1::LabelSelectorRequirement {
                key: "a".into(),
                operator: "In".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(LabelSelector::from_k8s(&empty_in)
            .unwrap_err()
            .to_string()
            .contains("values set can't be empty"));
        let exists_with_values = metav1::LabelSelector {
            match_expressions: Some(vec![metav1::LabelSelectorRequirement {
                key: "a".into(),
                operator: "Exists".into(),
                values: Some(vec!["x".into()]),
            }]),
            ..Default::default()
        };
        assert!(LabelSelector::from_k8s(&exists_with_values)
            .unwrap_err()
            .to_string()
            .contains("values set must be empty for exists and does not exist"));
    }

    #[test]
    fn from_labels_and_and_build_selectors() {
        let s = LabelSelector::from_labels(&labels(&[("b", "2"), ("a", "1")])).unwrap();
        assert_eq!(s.to_string(), "a=1,b=2");
        let s = s.and(Requirement::new("ab", Operator::Exists, Vec::<String>::new()).unwrap());
        assert_eq!(s.to_string(), "a=1,ab,b=2");
        assert!(LabelSelector::from_labels(&labels(&[("a b", "1")])).is_err());
    }

    #[test]
    fn requires_exact_match_finds_single_values() {
        let s = parse("a=1,b in (2),c in (3,4),d!=5");
        assert_eq!(s.requires_exact_match("a"), Some("1"));
        assert_eq!(s.requires_exact_match("b"), Some("2"));
        assert_eq!(s.requires_exact_match("c"), None);
        assert_eq!(s.requires_exact_match("d"), None);
        assert_eq!(s.requires_exact_match("e"), None);
    }

    #[test]
    fn matches_meta_treats_missing_labels_as_empty() {
        let meta = ObjectMeta::default();
        assert!(parse("!a").matches_meta(&meta));
        assert!(!parse("a").matches_meta(&meta));
    }

    #[test]
    fn odd_input_never_panics() {
        for input in [
            "(",
            ")",
            "((",
            "!!",
            "a!!b",
            "a in ((b))",
            "é=ü",
            "a=é",
            "\u{0}",
            "a in (b,",
            ">",
            "a<<1",
            "a>=1",
            "a=b=c",
        ] {
            let _ = LabelSelector::parse(input);
        }
    }
}
