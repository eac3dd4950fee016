/// Tokens of a Jinja template, with HF's environment: `trim_blocks` (the first newline after a
/// block or comment tag goes), `lstrip_blocks` (spaces and tabs before a block or comment tag on
/// its own line go), `-` and `+` whitespace control, and the template's final newline dropped.
enum JinjaTokenKind: Equatable {
    case text(String)
    case blockBegin, blockEnd, varBegin, varEnd
    case name(String)
    case string(String)
    case int(Int)
    case float(Double)
    case op(String)
    case end
}

struct JinjaToken {
    let kind: JinjaTokenKind
    let line: Int
}

struct JinjaLexer {
    let src: [UInt8]
    var pos = 0
    var line = 1
    var tokens: [JinjaToken] = []

    init(_ source: String) {
        // jinja2 normalises newlines in text to "\n" and, by default, drops one trailing newline.
        var bytes: [UInt8] = []
        bytes.reserveCapacity(source.utf8.count)
        var prevCR = false
        for b in source.utf8 {
            if b == 0x0A && prevCR { prevCR = false; continue }
            prevCR = b == 0x0D
            bytes.append(b == 0x0D ? 0x0A : b)
        }
        if bytes.last == 0x0A { bytes.removeLast() }
        src = bytes
    }

    static func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0D || b == 0x0B || b == 0x0C }

    func error(_ message: String, line: Int? = nil) -> PunaError {
        PunaError("chat template line \(line ?? self.line): \(message)")
    }

    func text(_ from: Int, _ to: Int) -> String { String(decoding: src[from..<to], as: UTF8.self) }

    mutating func tokenize() throws(PunaError) -> [JinjaToken] {
        var lineStarting = true
        while pos < src.count {
            // Find the next tag opening.
            var start = pos
            var found = -1
            while start + 1 < src.count {
                if src[start] == UInt8(ascii: "{") {
                    let n = src[start + 1]
                    if n == UInt8(ascii: "{") || n == UInt8(ascii: "%") || n == UInt8(ascii: "#") { found = start; break }
                }
                start += 1
            }
            let textEnd = found < 0 ? src.count : found
            var textStart = pos
            var textStop = textEnd
            if found >= 0 {
                let kind = src[found + 1]
                let sign: UInt8 = found + 2 < src.count ? src[found + 2] : 0
                if sign == UInt8(ascii: "-") {
                    while textStop > textStart && JinjaLexer.isSpace(src[textStop - 1]) { textStop -= 1 }
                } else if sign != UInt8(ascii: "+") && kind != UInt8(ascii: "{") {
                    // lstrip_blocks: only whitespace between the line's start and the tag.
                    var l = textStop
                    while l > textStart && (src[l - 1] == 0x20 || src[l - 1] == 0x09 || src[l - 1] == 0x0B || src[l - 1] == 0x0C || src[l - 1] == 0x0D) { l -= 1 }
                    let atLineStart = (l > textStart && src[l - 1] == 0x0A) || (l == textStart && lineStarting)
                    if atLineStart { textStop = l }
                }
            }
            if textStop > textStart { tokens.append(JinjaToken(kind: .text(text(textStart, textStop)), line: line)) }
            for b in src[textStart..<textEnd] where b == 0x0A { line += 1 }
            textStart = textEnd
            if found < 0 { pos = src.count; break }
            let kind = src[found + 1]
            pos = found + 2
            if pos < src.count && (src[pos] == UInt8(ascii: "-") || src[pos] == UInt8(ascii: "+")) { pos += 1 }
            if kind == UInt8(ascii: "#") {
                let openLine = line
                var closed = false
                while pos + 1 < src.count {
                    if src[pos] == UInt8(ascii: "#") && src[pos + 1] == UInt8(ascii: "}") { closed = true; break }
                    if src[pos] == 0x0A { line += 1 }
                    pos += 1
                }
                if !closed { throw error("unterminated comment '{#'", line: openLine) }
                let strip = src[pos - 1] == UInt8(ascii: "-")
                let keep = src[pos - 1] == UInt8(ascii: "+")
                pos += 2
                lineStarting = afterTag(strip: strip, trim: !keep)
                continue
            }
            let isBlock = kind == UInt8(ascii: "%")
            tokens.append(JinjaToken(kind: isBlock ? .blockBegin : .varBegin, line: line))
            try lexExpression(isBlock: isBlock)
            lineStarting = pos > 0 && src[pos - 1] == 0x0A
        }
        tokens.append(JinjaToken(kind: .end, line: line))
        return tokens
    }

    /// After a tag's closing: `-` strips all following whitespace; trim_blocks drops one newline.
    mutating func afterTag(strip: Bool, trim: Bool) -> Bool {
        if strip {
            while pos < src.count && JinjaLexer.isSpace(src[pos]) {
                if src[pos] == 0x0A { line += 1 }
                pos += 1
            }
        } else if trim && pos < src.count && src[pos] == 0x0A {
            pos += 1
            line += 1
            return true
        }
        return pos > 0 && src[pos - 1] == 0x0A
    }

    mutating func lexExpression(isBlock: Bool) throws(PunaError) {
        let openLine = line
        var depth = 0
        while true {
            while pos < src.count && JinjaLexer.isSpace(src[pos]) {
                if src[pos] == 0x0A { line += 1 }
                pos += 1
            }
            guard pos < src.count else {
                throw error("unterminated \(isBlock ? "'{%' block tag" : "'{{' expression")", line: openLine)
            }
            let c = src[pos]
            let next: UInt8 = pos + 1 < src.count ? src[pos + 1] : 0
            let next2: UInt8 = pos + 2 < src.count ? src[pos + 2] : 0
            // Closing tag (only outside brackets).
            if depth == 0 {
                let closer: UInt8 = isBlock ? UInt8(ascii: "%") : UInt8(ascii: "}")
                var signed: UInt8 = 0
                var matched = false
                if (c == UInt8(ascii: "-") || c == UInt8(ascii: "+")) && next == closer && next2 == UInt8(ascii: "}") {
                    signed = c; matched = true; pos += 3
                } else if c == closer && next == UInt8(ascii: "}") {
                    matched = true; pos += 2
                }
                if matched {
                    tokens.append(JinjaToken(kind: isBlock ? .blockEnd : .varEnd, line: line))
                    _ = afterTag(strip: signed == UInt8(ascii: "-"), trim: isBlock && signed != UInt8(ascii: "+"))
                    return
                }
            }
            if isNameStart(c) {
                let s = pos
                while pos < src.count && (isNameStart(src[pos]) || isDigit(src[pos])) { pos += 1 }
                tokens.append(JinjaToken(kind: .name(text(s, pos)), line: line))
            } else if isDigit(c) {
                try lexNumber()
            } else if c == UInt8(ascii: "'") || c == UInt8(ascii: "\"") {
                try lexString(quote: c)
            } else {
                let two = c == UInt8(ascii: "/") && next == UInt8(ascii: "/") || c == UInt8(ascii: "*") && next == UInt8(ascii: "*")
                    || (c == UInt8(ascii: "=") || c == UInt8(ascii: "!") || c == UInt8(ascii: "<") || c == UInt8(ascii: ">")) && next == UInt8(ascii: "=")
                if two {
                    tokens.append(JinjaToken(kind: .op(text(pos, pos + 2)), line: line))
                    pos += 2
                    continue
                }
                switch c {
                case UInt8(ascii: "("), UInt8(ascii: "["), UInt8(ascii: "{"): depth += 1
                case UInt8(ascii: ")"), UInt8(ascii: "]"), UInt8(ascii: "}"): depth = max(0, depth - 1)
                case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "*"), UInt8(ascii: "/"), UInt8(ascii: "%"),
                     UInt8(ascii: "~"), UInt8(ascii: "<"), UInt8(ascii: ">"), UInt8(ascii: "="), UInt8(ascii: ","),
                     UInt8(ascii: "."), UInt8(ascii: ":"), UInt8(ascii: "|"), UInt8(ascii: ";"):
                    break
                default:
                    throw error("unexpected character '\(text(pos, min(pos + 1, src.count)))' in a tag")
                }
                tokens.append(JinjaToken(kind: .op(text(pos, pos + 1)), line: line))
                pos += 1
            }
        }
    }

    func isNameStart(_ b: UInt8) -> Bool { (b >= 0x61 && b <= 0x7A) || (b >= 0x41 && b <= 0x5A) || b == 0x5F }
    func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }

    mutating func lexNumber() throws(PunaError) {
        let s = pos
        var isFloat = false
        while pos < src.count && (isDigit(src[pos]) || src[pos] == UInt8(ascii: "_")) { pos += 1 }
        if pos + 1 < src.count && src[pos] == UInt8(ascii: ".") && isDigit(src[pos + 1]) {
            isFloat = true
            pos += 1
            while pos < src.count && (isDigit(src[pos]) || src[pos] == UInt8(ascii: "_")) { pos += 1 }
        }
        if pos < src.count && (src[pos] == UInt8(ascii: "e") || src[pos] == UInt8(ascii: "E")) {
            var p = pos + 1
            if p < src.count && (src[p] == UInt8(ascii: "+") || src[p] == UInt8(ascii: "-")) { p += 1 }
            if p < src.count && isDigit(src[p]) {
                isFloat = true
                pos = p
                while pos < src.count && isDigit(src[pos]) { pos += 1 }
            }
        }
        var literal = ""
        for b in src[s..<pos] where b != UInt8(ascii: "_") { literal.unicodeScalars.append(Unicode.Scalar(b)) }
        if isFloat {
            guard let d = jinjaParseDouble(literal) else { throw error("bad number '\(literal)'") }
            tokens.append(JinjaToken(kind: .float(d), line: line))
        } else {
            guard let i = Int(literal) else { throw error("integer '\(clipped(literal, maxBytes: 40))' out of range") }
            tokens.append(JinjaToken(kind: .int(i), line: line))
        }
    }

    mutating func lexString(quote: UInt8) throws(PunaError) {
        let startLine = line
        pos += 1
        var bytes: [UInt8] = []
        while true {
            guard pos < src.count else { throw error("unterminated string literal", line: startLine) }
            let b = src[pos]
            if b == quote { pos += 1; break }
            if b == 0x0A { line += 1 }
            if b == UInt8(ascii: "\\") && pos + 1 < src.count {
                let e = src[pos + 1]
                pos += 2
                switch e {
                case UInt8(ascii: "n"): bytes.append(0x0A)
                case UInt8(ascii: "t"): bytes.append(0x09)
                case UInt8(ascii: "r"): bytes.append(0x0D)
                case UInt8(ascii: "0"): bytes.append(0)
                case UInt8(ascii: "\\"), UInt8(ascii: "'"), UInt8(ascii: "\""): bytes.append(e)
                case UInt8(ascii: "\n"): line += 1
                case UInt8(ascii: "x"), UInt8(ascii: "u"), UInt8(ascii: "U"):
                    let n = e == UInt8(ascii: "x") ? 2 : (e == UInt8(ascii: "u") ? 4 : 8)
                    guard pos + n <= src.count, let v = UInt32(text(pos, pos + n), radix: 16), let u = Unicode.Scalar(v) else {
                        throw error("bad escape in string literal")
                    }
                    bytes.append(contentsOf: Array(String(Character(u)).utf8))
                    pos += n
                default:
                    // Python keeps an unknown escape as written.
                    bytes.append(UInt8(ascii: "\\")); bytes.append(e)
                }
                continue
            }
            bytes.append(b)
            pos += 1
        }
        tokens.append(JinjaToken(kind: .string(String(decoding: bytes, as: UTF8.self)), line: startLine))
    }
}
