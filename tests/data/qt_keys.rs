// The Rust tests' reader of tests/data/qt_keys.json, the key rows they share with the Python
// tests. Included into the test module of src/key.rs (`include!`), so it needs no dependency
// (the crate has two, libc and sha1_smol; serde_json would add a dev-dependency tree for one
// small file). It reads the JSON that file uses: objects, arrays, strings with every JSON
// escape (surrogate pairs too), integers; anything else panics with its byte offset.

/// A value of the JSON subset of qt_keys.json.
#[derive(Debug)]
pub enum Json {
    Str(String),
    Int(i64),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn str(&self) -> &str {
        match self {
            Json::Str(text) => text,
            other => panic!("not a string: {other:?}"),
        }
    }

    pub fn int(&self) -> i64 {
        match self {
            Json::Int(value) => *value,
            other => panic!("not an integer: {other:?}"),
        }
    }
}

/// The rows of one table of qt_keys.json, each a list of fields.
pub fn table(name: &str) -> Vec<Vec<Json>> {
    let text = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/qt_keys.json"
    ));
    let mut parser = Parser { text, pos: 0 };
    let Json::Obj(tables) = parser.value() else {
        panic!("qt_keys.json is not an object");
    };
    parser.skip_whitespace();
    assert_eq!(parser.pos, text.len(), "trailing data in qt_keys.json");
    let (_, rows) = tables
        .into_iter()
        .find(|(table, _)| table == name)
        .unwrap_or_else(|| panic!("no table {name:?} in qt_keys.json"));
    let Json::Arr(rows) = rows else {
        panic!("table {name:?} is not an array");
    };
    assert!(
        !rows.is_empty(),
        "table {name:?} has no rows: its tests would pass vacuously"
    );
    rows.into_iter()
        .map(|row| match row {
            Json::Arr(fields) => fields,
            other => panic!("a row of {name:?} is not an array: {other:?}"),
        })
        .collect()
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn next_char(&mut self) -> char {
        let c = self
            .peek()
            .unwrap_or_else(|| panic!("qt_keys.json ends early"));
        self.pos += c.len_utf8();
        c
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, wanted: char) {
        let at = self.pos;
        let got = self.next_char();
        assert_eq!(got, wanted, "qt_keys.json, byte {at}");
    }

    fn value(&mut self) -> Json {
        self.skip_whitespace();
        match self.peek() {
            Some('"') => Json::Str(self.string()),
            Some('[') => Json::Arr(self.sequence(']', Self::value)),
            Some('{') => Json::Obj(self.sequence('}', |parser| {
                parser.skip_whitespace();
                let name = parser.string();
                parser.skip_whitespace();
                parser.expect(':');
                (name, parser.value())
            })),
            Some(c) if c == '-' || c.is_ascii_digit() => {
                let start = self.pos;
                self.pos += 1;
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.pos += 1;
                }
                Json::Int(self.text[start..self.pos].parse().expect("an integer"))
            }
            other => panic!("qt_keys.json, byte {}: unexpected {other:?}", self.pos),
        }
    }

    /// The items of an array or object, after its opening bracket, up to `close`.
    fn sequence<T>(&mut self, close: char, mut item: impl FnMut(&mut Self) -> T) -> Vec<T> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(close) {
            self.pos += 1;
            return items;
        }
        loop {
            items.push(item(self));
            self.skip_whitespace();
            match self.next_char() {
                ',' => {}
                c if c == close => return items,
                c => panic!("qt_keys.json, byte {}: unexpected {c:?}", self.pos - 1),
            }
        }
    }

    fn string(&mut self) -> String {
        self.expect('"');
        let mut out = String::new();
        loop {
            match self.next_char() {
                '"' => return out,
                '\\' => out.push(match self.next_char() {
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'u' => self.unicode_escape(),
                    c @ ('"' | '\\' | '/') => c,
                    c => panic!("qt_keys.json, byte {}: bad escape \\{c}", self.pos - 1),
                }),
                c => out.push(c),
            }
        }
    }

    /// After `\u`: four hex digits, and a second `\uXXXX` if they are a high surrogate.
    fn unicode_escape(&mut self) -> char {
        let hex4 = |parser: &mut Self| {
            let digits = &parser.text[parser.pos..parser.pos + 4];
            parser.pos += 4;
            u32::from_str_radix(digits, 16).expect("four hex digits")
        };
        let first = hex4(self);
        let code = if (0xD800..0xDC00).contains(&first) {
            self.expect('\\');
            self.expect('u');
            let second = hex4(self);
            assert!((0xDC00..0xE000).contains(&second), "a lone high surrogate");
            0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
        } else {
            first
        };
        char::from_u32(code).expect("a lone low surrogate")
    }
}
