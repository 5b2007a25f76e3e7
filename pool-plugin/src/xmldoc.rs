//! A small element tree read with quick-xml, each element with the line it starts on, so that an
//! error names the line and the element ("line 4: <capacity>: ...").

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use std::fmt;

/// An XML problem: where (line, element) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlError {
    pub line: usize,
    pub element: Option<String>,
    pub message: String,
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.element {
            Some(e) => write!(f, "line {}: <{}>: {}", self.line, e, self.message),
            None => write!(f, "line {}: {}", self.line, self.message),
        }
    }
}

impl std::error::Error for XmlError {}

/// One element: name, attributes in document order, child elements, its own text (concatenated,
/// unescaped) and the line of its start tag.
#[derive(Debug, Clone, Default)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
    pub line: usize,
}

impl Element {
    /// The value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// An error about this element.
    pub fn error(&self, message: impl Into<String>) -> XmlError {
        XmlError {
            line: self.line,
            element: Some(self.name.clone()),
            message: message.into(),
        }
    }

    /// Refuses children other than `allowed` and a second copy of any of them.
    pub fn only_children(&self, allowed: &[&str]) -> Result<(), XmlError> {
        let mut seen: Vec<&str> = Vec::new();
        for c in &self.children {
            if !allowed.contains(&c.name.as_str()) {
                return Err(c.error(format!(
                    "unexpected element in <{}> (expected one of {})",
                    self.name,
                    allowed
                        .iter()
                        .map(|a| format!("<{a}>"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if seen.contains(&c.name.as_str()) {
                return Err(c.error(format!("appears twice in <{}>", self.name)));
            }
            seen.push(&c.name);
        }
        Ok(())
    }

    /// The trimmed text, refusing an empty one.
    pub fn required_text(&self) -> Result<&str, XmlError> {
        let t = self.text.trim();
        if t.is_empty() {
            return Err(self.error("is empty"));
        }
        Ok(t)
    }
}

/// 1-based line of byte offset `pos` in `s`.
pub fn line_of(s: &str, pos: usize) -> usize {
    let end = pos.min(s.len());
    s.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
}

fn start_element(e: &BytesStart<'_>, line: usize) -> Result<Element, XmlError> {
    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    let mut el = Element {
        name,
        line,
        ..Element::default()
    };
    for a in e.attributes() {
        let a = a.map_err(|err| el.error(format!("bad attribute: {err}")))?;
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let value = a
            .unescape_value()
            .map_err(|err| el.error(format!("bad value of attribute {key}: {err}")))?
            .into_owned();
        el.attrs.push((key, value));
    }
    Ok(el)
}

/// Parses a document with one root element. Comments, processing instructions and the XML
/// declaration are skipped; a DOCTYPE is refused (no entity tricks).
pub fn parse(s: &str) -> Result<Element, XmlError> {
    let mut reader = Reader::from_str(s);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let pos = reader.buffer_position() as usize;
        // The event starts after any whitespace the reader skips: find its '<'.
        let line = line_of(s, pos + s[pos.min(s.len())..].find('<').unwrap_or(0));
        let ev = reader.read_event().map_err(|err| {
            let at = reader.error_position() as usize;
            XmlError {
                line: line_of(s, at),
                element: stack.last().map(|e| e.name.clone()),
                message: format!("malformed XML: {err}"),
            }
        })?;
        let outside = |what: &str| XmlError {
            line,
            element: None,
            message: format!("{what} outside the root element"),
        };
        match ev {
            Event::Start(e) => {
                if root.is_some() && stack.is_empty() {
                    return Err(outside("a second element"));
                }
                stack.push(start_element(&e, line)?);
            }
            Event::Empty(e) => {
                if root.is_some() && stack.is_empty() {
                    return Err(outside("a second element"));
                }
                let el = start_element(&e, line)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                let Some(el) = stack.pop() else {
                    return Err(outside("an end tag"));
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let text = t.unescape().map_err(|err| XmlError {
                    line,
                    element: stack.last().map(|e| e.name.clone()),
                    message: format!("malformed text: {err}"),
                })?;
                match stack.last_mut() {
                    Some(el) => el.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => return Err(outside("text")),
                }
            }
            Event::CData(t) => {
                let text = String::from_utf8_lossy(&t).into_owned();
                match stack.last_mut() {
                    Some(el) => el.text.push_str(&text),
                    None => return Err(outside("CDATA")),
                }
            }
            Event::DocType(_) => {
                return Err(XmlError {
                    line,
                    element: None,
                    message: "a DOCTYPE is not accepted".into(),
                })
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(open) = stack.last() {
        return Err(open.error("not closed before the end of the document"));
    }
    root.ok_or(XmlError {
        line: line_of(s, s.len()),
        element: None,
        message: "no root element (empty document)".into(),
    })
}

/// Escapes text for an element or an attribute in single quotes.
pub fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_elements_and_errors() {
        let d = parse("<?xml version='1.0'?>\n<a x='1'>\n  <b>hi &amp; bye</b>\n  <c/>\n</a>\n")
            .unwrap();
        assert_eq!(d.name, "a");
        assert_eq!(d.attr("x"), Some("1"));
        assert_eq!(d.child("b").unwrap().text, "hi & bye");
        assert_eq!(d.child("b").unwrap().line, 3);
        assert_eq!(d.child("c").unwrap().line, 4);

        let e = parse("<pool>\n  <name>x</nam>\n</pool>").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert_eq!(e.element.as_deref(), Some("name"), "{e}");
        let e = parse("<pool>\n<name>x</name>\n").unwrap_err();
        assert!(e.to_string().contains("<pool>"), "{e}");
        assert!(parse("").is_err());
        assert!(parse("<a/><b/>").is_err());
        assert!(parse("<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>").is_err());
        let e = parse("<a>\n<b/>\n<b/>\n</a>")
            .unwrap()
            .only_children(&["b"])
            .unwrap_err();
        assert_eq!((e.line, e.element.as_deref()), (3, Some("b")));
    }
}
