//! The `calculate` tool: evaluates arithmetic expressions exactly as written,
//! so the model does not have to do arithmetic in its head.
//!
//! Grammar: numbers (`1`, `2.5`, `1e3`), `+ - * / %`, `^` (power, right
//! associative), unary minus, parentheses, the constants `pi` and `e`, and the
//! functions `sqrt abs ln log10 exp sin cos tan floor ceil round min max`.

use loom_sdk::{ToolError, tool};

/// Evaluate an arithmetic expression.
#[tool(
    description = "Evaluate an arithmetic expression such as `(2 + 3) * 4 ^ 2 / sqrt(16)` and return the number",
    read_only,
    idempotent
)]
fn calculate(
    #[arg(
        description = "The expression: numbers, + - * / % ^, parentheses, pi, e, sqrt abs ln log10 exp sin cos tan floor ceil round min max"
    )]
    expression: String,
) -> Result<f64, ToolError> {
    let value = evaluate(&expression).map_err(ToolError::invalid_arguments)?;
    if !value.is_finite() {
        return Err(ToolError::failed(format!(
            "`{expression}` has no finite value (division by zero or overflow)"
        )));
    }
    Ok(value)
}

loom_sdk::export_tools!(calculate);

/// Evaluate `text`, or say where it stops making sense.
pub fn evaluate(text: &str) -> Result<f64, String> {
    if text.len() > 4096 {
        return Err("expression longer than 4096 characters".into());
    }
    let mut parser = Parser {
        chars: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let value = parser.expression()?;
    parser.skip_spaces();
    if parser.pos != parser.chars.len() {
        return Err(format!(
            "unexpected `{}` at position {}",
            char::from(parser.chars[parser.pos]),
            parser.pos + 1
        ));
    }
    Ok(value)
}

struct Parser<'a> {
    chars: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn skip_spaces(&mut self) {
        while self.pos < self.chars.len() && self.chars[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_spaces();
        self.chars.get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!(
                "expected `{}` at position {}",
                char::from(byte),
                self.pos + 1
            ))
        }
    }

    fn expression(&mut self) -> Result<f64, String> {
        self.depth += 1;
        if self.depth > 64 {
            return Err("expression nested more than 64 levels deep".into());
        }
        let mut value = self.term()?;
        while let Some(op @ (b'+' | b'-')) = self.peek() {
            self.pos += 1;
            let rhs = self.term()?;
            value = if op == b'+' { value + rhs } else { value - rhs };
        }
        self.depth -= 1;
        Ok(value)
    }

    fn term(&mut self) -> Result<f64, String> {
        let mut value = self.power()?;
        while let Some(op @ (b'*' | b'/' | b'%')) = self.peek() {
            self.pos += 1;
            let rhs = self.power()?;
            value = match op {
                b'*' => value * rhs,
                b'/' => value / rhs,
                _ => value % rhs,
            };
        }
        Ok(value)
    }

    fn power(&mut self) -> Result<f64, String> {
        let base = self.unary()?;
        if self.peek() == Some(b'^') {
            self.pos += 1;
            let exponent = self.power()?;
            return Ok(base.powf(exponent));
        }
        Ok(base)
    }

    fn unary(&mut self) -> Result<f64, String> {
        match self.peek() {
            Some(b'-') => {
                self.pos += 1;
                Ok(-self.unary()?)
            }
            Some(b'+') => {
                self.pos += 1;
                self.unary()
            }
            _ => self.atom(),
        }
    }

    fn atom(&mut self) -> Result<f64, String> {
        match self.peek() {
            Some(b'(') => {
                self.pos += 1;
                let value = self.expression()?;
                self.expect(b')')?;
                Ok(value)
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => self.number(),
            Some(c) if c.is_ascii_alphabetic() => self.name(),
            Some(c) => Err(format!(
                "unexpected `{}` at position {}",
                char::from(c),
                self.pos + 1
            )),
            None => Err("unexpected end of expression".into()),
        }
    }

    fn number(&mut self) -> Result<f64, String> {
        let start = self.pos;
        while self.pos < self.chars.len()
            && (self.chars[self.pos].is_ascii_digit() || self.chars[self.pos] == b'.')
        {
            self.pos += 1;
        }
        if self.pos < self.chars.len() && matches!(self.chars[self.pos], b'e' | b'E') {
            let save = self.pos;
            self.pos += 1;
            if self.pos < self.chars.len() && matches!(self.chars[self.pos], b'+' | b'-') {
                self.pos += 1;
            }
            let digits = self.pos;
            while self.pos < self.chars.len() && self.chars[self.pos].is_ascii_digit() {
                self.pos += 1;
            }
            if digits == self.pos {
                self.pos = save;
            }
        }
        let text = std::str::from_utf8(&self.chars[start..self.pos]).unwrap_or("");
        text.parse::<f64>()
            .map_err(|_| format!("`{text}` at position {} is not a number", start + 1))
    }

    fn name(&mut self) -> Result<f64, String> {
        let start = self.pos;
        while self.pos < self.chars.len() && self.chars[self.pos].is_ascii_alphanumeric() {
            self.pos += 1;
        }
        let name = std::str::from_utf8(&self.chars[start..self.pos]).unwrap_or("");
        match name {
            "pi" => return Ok(std::f64::consts::PI),
            "e" => return Ok(std::f64::consts::E),
            _ => {}
        }
        self.expect(b'(')?;
        let first = self.expression()?;
        let second = if self.peek() == Some(b',') {
            self.pos += 1;
            Some(self.expression()?)
        } else {
            None
        };
        self.expect(b')')?;
        let one = |f: fn(f64) -> f64| match second {
            None => Ok(f(first)),
            Some(_) => Err(format!("`{name}` takes one argument")),
        };
        match name {
            "sqrt" => one(f64::sqrt),
            "abs" => one(f64::abs),
            "ln" => one(f64::ln),
            "log10" => one(f64::log10),
            "exp" => one(f64::exp),
            "sin" => one(f64::sin),
            "cos" => one(f64::cos),
            "tan" => one(f64::tan),
            "floor" => one(f64::floor),
            "ceil" => one(f64::ceil),
            "round" => one(f64::round),
            "min" | "max" => {
                let second = second.ok_or_else(|| format!("`{name}` takes two arguments"))?;
                Ok(if name == "min" {
                    first.min(second)
                } else {
                    first.max(second)
                })
            }
            _ => Err(format!(
                "unknown function or constant `{name}` at position {}",
                start + 1
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::evaluate;

    #[test]
    fn precedence_and_associativity() {
        assert_eq!(evaluate("2 + 3 * 4").unwrap(), 14.0);
        assert_eq!(evaluate("(2 + 3) * 4").unwrap(), 20.0);
        assert_eq!(evaluate("2 ^ 3 ^ 2").unwrap(), 512.0);
        assert_eq!(evaluate("-2 ^ 2").unwrap(), 4.0);
        assert_eq!(evaluate("10 % 4 - 1").unwrap(), 1.0);
        assert_eq!(evaluate("sqrt(16) + max(1, 2.5)").unwrap(), 6.5);
        assert_eq!(evaluate("1e3 / 4").unwrap(), 250.0);
    }

    #[test]
    fn errors_name_the_position() {
        assert!(evaluate("2 +").unwrap_err().contains("end of expression"));
        assert!(evaluate("2 $ 3").unwrap_err().contains("position 3"));
        assert!(evaluate("foo(1)").unwrap_err().contains("unknown function"));
        assert!(
            evaluate(&"(".repeat(100))
                .unwrap_err()
                .contains("64 levels")
        );
    }
}
