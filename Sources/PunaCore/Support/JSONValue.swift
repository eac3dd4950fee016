import CPuna

/// A parsed JSON document (RFC 8259), for small inputs such as PEFT's `adapter_config.json` and
/// one-object-per-line batch files. Numbers keep their literal text next to the Double, so an
/// integer beyond 2^53 (a 64-bit seed, say) can still be read exactly. Objects keep their members
/// in document order.
public indirect enum JSONValue: Equatable {
    case null
    case bool(Bool)
    /// The value as a Double (nearest, as strtod rounds) and the literal text as written.
    case number(Double, text: String)
    case string(String)
    case array([JSONValue])
    /// Members in document order; keys are unique (the parser rejects duplicates).
    case object([(key: String, value: JSONValue)])

    /// Nesting deeper than this is refused, so hostile input cannot exhaust the stack.
    public static let defaultMaxDepth = 128

    /// Parse a whole document. Anything but whitespace after the value is an error.
    public static func parse(_ text: String, maxDepth: Int = defaultMaxDepth) throws(PunaError) -> JSONValue {
        var copy = text
        var result: Result<JSONValue, PunaError> = .failure(PunaError("JSON: empty input"))
        copy.withUTF8 { bytes in result = parseResult(bytes, maxDepth: maxDepth) }
        return try result.get()
    }

    /// Parse a whole document from UTF-8 bytes.
    public static func parse(bytes: [UInt8], maxDepth: Int = defaultMaxDepth) throws(PunaError) -> JSONValue {
        let result = bytes.withUnsafeBufferPointer { parseResult($0, maxDepth: maxDepth) }
        return try result.get()
    }

    /// Parse a whole document from UTF-8 bytes in memory (a mapped file, say).
    public static func parse(bytes: UnsafeBufferPointer<UInt8>, maxDepth: Int = defaultMaxDepth) throws(PunaError) -> JSONValue {
        try parseResult(bytes, maxDepth: maxDepth).get()
    }

    private static func parseResult(_ bytes: UnsafeBufferPointer<UInt8>, maxDepth: Int) -> Result<JSONValue, PunaError> {
        var parser = JSONParser(bytes: bytes, maxDepth: maxDepth)
        do throws(PunaError) {
            return .success(try parser.parseDocument())
        } catch {
            return .failure(error)
        }
    }

    // MARK: accessors

    /// The member named `key` of an object; nil for a missing key or a non-object.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        for member in members where member.key == key { return member.value }
        return nil
    }

    /// The element at `index` of an array; nil when out of range or not an array.
    public subscript(index: Int) -> JSONValue? {
        guard case .array(let items) = self, index >= 0, index < items.count else { return nil }
        return items[index]
    }

    public var isNull: Bool { if case .null = self { return true } else { return false } }

    public var bool: Bool? { if case .bool(let b) = self { return b } else { return nil } }

    public var string: String? { if case .string(let s) = self { return s } else { return nil } }

    public var array: [JSONValue]? { if case .array(let a) = self { return a } else { return nil } }

    public var object: [(key: String, value: JSONValue)]? {
        if case .object(let o) = self { return o } else { return nil }
    }

    /// Object keys in document order.
    public var keys: [String]? { object.map { members in members.map { $0.key } } }

    public var double: Double? { if case .number(let d, _) = self { return d } else { return nil } }

    /// The number exactly as written in the document.
    public var numberText: String? { if case .number(_, let t) = self { return t } else { return nil } }

    /// The number as an Int when it is a whole number that Int holds exactly: an integer literal
    /// is read digit by digit (no rounding through Double); "16.0" or "1e3" count as whole when
    /// their Double is integral and below 2^53, where Double is still exact.
    public var int: Int? {
        guard case .number(let d, let text) = self else { return nil }
        if let exact = JSONValue.integerLiteral(text) {
            guard exact.magnitude <= UInt64(Int.max) + (exact.negative ? 1 : 0) else { return nil }
            return exact.negative ? Int(truncatingIfNeeded: 0 &- exact.magnitude) : Int(exact.magnitude)
        }
        return JSONValue.exactWholeDouble(d).flatMap { Int(exactly: $0) }
    }

    /// The number as a UInt64 (seeds up to 2^64-1), with the same exactness rules as `int`.
    public var uint64: UInt64? {
        guard case .number(let d, let text) = self else { return nil }
        if let exact = JSONValue.integerLiteral(text) {
            return exact.negative && exact.magnitude != 0 ? nil : exact.magnitude
        }
        return JSONValue.exactWholeDouble(d).flatMap { UInt64(exactly: $0) }
    }

    /// Sign and magnitude of a plain integer literal ("-12", "0"); nil for fractions, exponents or
    /// a magnitude past UInt64.
    private static func integerLiteral(_ text: String) -> (negative: Bool, magnitude: UInt64)? {
        var negative = false
        var magnitude: UInt64 = 0
        var digits = 0
        for c in text.utf8 {
            if c == UInt8(ascii: "-") && digits == 0 && !negative { negative = true; continue }
            guard c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") else { return nil }
            let (times10, o1) = magnitude.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times10.addingReportingOverflow(UInt64(c - UInt8(ascii: "0")))
            if o1 || o2 { return nil }
            magnitude = sum
            digits += 1
        }
        return digits > 0 ? (negative, magnitude) : nil
    }

    /// `d` when it is integral and small enough that every integer up to it is a Double.
    private static func exactWholeDouble(_ d: Double) -> Double? {
        guard d.isFinite, d == d.rounded(.towardZero), d.magnitude <= 9_007_199_254_740_992 else { return nil }
        return d
    }

    // MARK: Equatable

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case (.bool(let x), .bool(let y)): return x == y
        // Equal numbers compare equal whatever their spelling ("1.0" and "1").
        case (.number(let x, _), .number(let y, _)): return x == y
        case (.string(let x), .string(let y)): return x == y
        case (.array(let x), .array(let y)): return x == y
        case (.object(let x), .object(let y)):
            guard x.count == y.count else { return false }
            for i in 0..<x.count where x[i].key != y[i].key || x[i].value != y[i].value { return false }
            return true
        default: return false
        }
    }
}

/// Recursive-descent parser over UTF-8 bytes. Every error names the byte offset and what was
/// expected there.
private struct JSONParser {
    let bytes: UnsafeBufferPointer<UInt8>
    let maxDepth: Int
    var position = 0
    var depth = 0

    init(bytes: UnsafeBufferPointer<UInt8>, maxDepth: Int) {
        self.bytes = bytes
        self.maxDepth = maxDepth
    }

    func fail(_ expected: String, at offset: Int? = nil) -> PunaError {
        let at = offset ?? position
        let found: String
        if at >= bytes.count {
            found = "end of input"
        } else {
            let b = bytes[at]
            found = b >= 0x20 && b < 0x7F ? "'\(String(decoding: [b], as: UTF8.self))'" : "byte 0x\(hex(b))"
        }
        return PunaError("JSON: at byte \(at): expected \(expected), found \(found)")
    }

    private func hex(_ b: UInt8) -> String {
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        return String(decoding: [digits[Int(b >> 4)], digits[Int(b & 15)]], as: UTF8.self)
    }

    var atEnd: Bool { position >= bytes.count }
    var current: UInt8 { bytes[position] }

    mutating func skipWhitespace() {
        while position < bytes.count {
            switch bytes[position] {
            case 0x20, 0x09, 0x0A, 0x0D: position += 1
            default: return
            }
        }
    }

    mutating func parseDocument() throws(PunaError) -> JSONValue {
        // A UTF-8 byte order mark is tolerated (RFC 8259 §8.1 lets parsers ignore it): editors on
        // Windows write one into config files.
        if bytes.count >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF { position = 3 }
        skipWhitespace()
        let value = try parseValue()
        skipWhitespace()
        if !atEnd { throw fail("end of input after the JSON value") }
        return value
    }

    mutating func parseValue() throws(PunaError) -> JSONValue {
        guard !atEnd else { throw fail("a JSON value") }
        switch current {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expectWord("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectWord("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectWord("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        default: throw fail("a JSON value")
        }
    }

    mutating func expectWord(_ word: String) throws(PunaError) {
        let start = position
        for c in word.utf8 {
            guard position < bytes.count, bytes[position] == c else {
                throw fail("'\(word)'", at: start)
            }
            position += 1
        }
    }

    mutating func enter() throws(PunaError) {
        depth += 1
        if depth > maxDepth { throw PunaError("JSON: at byte \(position): nesting deeper than \(maxDepth) levels") }
    }

    mutating func parseArray() throws(PunaError) -> JSONValue {
        try enter()
        position += 1  // '['
        var items: [JSONValue] = []
        skipWhitespace()
        if !atEnd && current == UInt8(ascii: "]") {
            position += 1
            depth -= 1
            return .array(items)
        }
        while true {
            skipWhitespace()
            items.append(try parseValue())
            skipWhitespace()
            guard !atEnd else { throw fail("',' or ']' in an array") }
            if current == UInt8(ascii: ",") { position += 1; continue }
            if current == UInt8(ascii: "]") { position += 1; break }
            throw fail("',' or ']' in an array")
        }
        depth -= 1
        return .array(items)
    }

    mutating func parseObject() throws(PunaError) -> JSONValue {
        try enter()
        position += 1  // '{'
        var members: [(key: String, value: JSONValue)] = []
        var seen = Set<String>()
        skipWhitespace()
        if !atEnd && current == UInt8(ascii: "}") {
            position += 1
            depth -= 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard !atEnd, current == UInt8(ascii: "\"") else { throw fail("a '\"' starting an object key") }
            let keyOffset = position
            let key = try parseString()
            // Duplicate keys are legal in RFC 8259 but read differently by different parsers;
            // refusing them (as I-JSON, RFC 7493, does) keeps a config from meaning two things.
            guard seen.insert(key).inserted else { throw PunaError("JSON: at byte \(keyOffset): duplicate object key \"\(key)\"") }
            skipWhitespace()
            guard !atEnd, current == UInt8(ascii: ":") else { throw fail("':' after an object key") }
            position += 1
            skipWhitespace()
            members.append((key: key, value: try parseValue()))
            skipWhitespace()
            guard !atEnd else { throw fail("',' or '}' in an object") }
            if current == UInt8(ascii: ",") { position += 1; continue }
            if current == UInt8(ascii: "}") { position += 1; break }
            throw fail("',' or '}' in an object")
        }
        depth -= 1
        return .object(members)
    }

    /// Number grammar: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
    mutating func parseNumber() throws(PunaError) -> JSONValue {
        let start = position
        if current == UInt8(ascii: "-") { position += 1 }
        guard !atEnd, isDigit(current) else { throw fail("a digit") }
        if current == UInt8(ascii: "0") {
            position += 1
            if !atEnd && isDigit(current) { throw fail("no leading zero: '.', 'e' or the end of the number") }
        } else {
            while !atEnd && isDigit(current) { position += 1 }
        }
        if !atEnd && current == UInt8(ascii: ".") {
            position += 1
            guard !atEnd, isDigit(current) else { throw fail("a digit after '.'") }
            while !atEnd && isDigit(current) { position += 1 }
        }
        if !atEnd && (current == UInt8(ascii: "e") || current == UInt8(ascii: "E")) {
            position += 1
            if !atEnd && (current == UInt8(ascii: "+") || current == UInt8(ascii: "-")) { position += 1 }
            guard !atEnd, isDigit(current) else { throw fail("a digit in the exponent") }
            while !atEnd && isDigit(current) { position += 1 }
        }
        // The grammar above is a subset of what strtod accepts, so strtod only does the rounding.
        var literal = [CChar](repeating: 0, count: position - start + 1)
        for i in start..<position { literal[i - start] = CChar(bitPattern: bytes[i]) }
        var value = 0.0
        let ok = literal.withUnsafeBufferPointer { puna_parse_double($0.baseAddress, &value) }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self)
        guard ok == 1, value.isFinite else { throw PunaError("JSON: at byte \(start): number \(text) is out of range for a double") }
        return .number(value, text: text)
    }

    func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }

    /// A string literal starting at the opening quote; validates UTF-8 and escapes.
    mutating func parseString() throws(PunaError) -> String {
        position += 1  // opening quote
        var out: [UInt8] = []
        while true {
            guard !atEnd else { throw fail("'\"' closing the string") }
            let b = current
            if b == UInt8(ascii: "\"") {
                position += 1
                return String(decoding: out, as: UTF8.self)
            }
            if b == UInt8(ascii: "\\") {
                try parseEscape(into: &out)
            } else if b < 0x20 {
                throw fail("an escape for the control character (\\n, \\t, \\u00XX...)")
            } else if b < 0x80 {
                out.append(b)
                position += 1
            } else {
                try copyUTF8Sequence(into: &out)
            }
        }
    }

    mutating func parseEscape(into out: inout [UInt8]) throws(PunaError) {
        let escapeStart = position
        position += 1  // backslash
        guard !atEnd else { throw fail("an escape character after '\\'") }
        let c = current
        position += 1
        switch c {
        case UInt8(ascii: "\""): out.append(0x22)
        case UInt8(ascii: "\\"): out.append(0x5C)
        case UInt8(ascii: "/"): out.append(0x2F)
        case UInt8(ascii: "b"): out.append(0x08)
        case UInt8(ascii: "f"): out.append(0x0C)
        case UInt8(ascii: "n"): out.append(0x0A)
        case UInt8(ascii: "r"): out.append(0x0D)
        case UInt8(ascii: "t"): out.append(0x09)
        case UInt8(ascii: "u"):
            var scalar = try parseHex4()
            if scalar >= 0xD800 && scalar <= 0xDBFF {
                // A high surrogate must be followed by an escaped low surrogate; together they
                // name one scalar above U+FFFF.
                guard position + 1 < bytes.count, bytes[position] == UInt8(ascii: "\\"), bytes[position + 1] == UInt8(ascii: "u") else {
                    throw fail("a \\u low surrogate after the high surrogate at byte \(escapeStart)")
                }
                let lowStart = position
                position += 2
                let low = try parseHex4()
                guard low >= 0xDC00 && low <= 0xDFFF else {
                    throw fail("a low surrogate (\\uDC00-\\uDFFF) after the high surrogate", at: lowStart)
                }
                scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
            } else if scalar >= 0xDC00 && scalar <= 0xDFFF {
                throw fail("a scalar value, not a lone low surrogate", at: escapeStart)
            }
            appendUTF8(scalar, to: &out)
        default:
            throw fail("an escape character (one of \" \\ / b f n r t u) after '\\'", at: position - 1)
        }
    }

    mutating func parseHex4() throws(PunaError) -> UInt32 {
        var value: UInt32 = 0
        for _ in 0..<4 {
            guard !atEnd else { throw fail("4 hex digits after \\u") }
            let c = current
            let digit: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw fail("4 hex digits after \\u")
            }
            value = value << 4 | digit
            position += 1
        }
        return value
    }

    func appendUTF8(_ scalar: UInt32, to out: inout [UInt8]) {
        switch scalar {
        case 0..<0x80:
            out.append(UInt8(scalar))
        case 0x80..<0x800:
            out.append(UInt8(0xC0 | scalar >> 6))
            out.append(UInt8(0x80 | scalar & 0x3F))
        case 0x800..<0x10000:
            out.append(UInt8(0xE0 | scalar >> 12))
            out.append(UInt8(0x80 | scalar >> 6 & 0x3F))
            out.append(UInt8(0x80 | scalar & 0x3F))
        default:
            out.append(UInt8(0xF0 | scalar >> 18))
            out.append(UInt8(0x80 | scalar >> 12 & 0x3F))
            out.append(UInt8(0x80 | scalar >> 6 & 0x3F))
            out.append(UInt8(0x80 | scalar & 0x3F))
        }
    }

    /// Copy one multi-byte UTF-8 character, refusing overlong forms, encoded surrogates, values
    /// past U+10FFFF and truncated sequences (RFC 3629 table of well-formed byte sequences).
    mutating func copyUTF8Sequence(into out: inout [UInt8]) throws(PunaError) {
        let start = position
        let lead = current
        let length: Int
        var low: UInt8 = 0x80, high: UInt8 = 0xBF  // allowed range of the second byte
        switch lead {
        case 0xC2...0xDF: length = 2
        case 0xE0: length = 3; low = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED: length = 3; high = 0x9F
        case 0xF0: length = 4; low = 0x90
        case 0xF1...0xF3: length = 4
        case 0xF4: length = 4; high = 0x8F
        default: throw fail("valid UTF-8 in the string")
        }
        for i in 1..<length {
            guard start + i < bytes.count else { throw fail("valid UTF-8 in the string (truncated character)", at: start) }
            let b = bytes[start + i]
            let ok = i == 1 ? (b >= low && b <= high) : (b & 0xC0 == 0x80)
            guard ok else { throw fail("valid UTF-8 in the string", at: start) }
        }
        for i in 0..<length { out.append(bytes[start + i]) }
        position += length
    }
}
