import CPuna

// A Hugging Face folder's README.md model card: the YAML front matter between a first line "---" and the
// next line "---", read for the general.* keys convert_hf_to_gguf.py writes from it (license, tags,
// languages, base models, datasets, and names the card sets). Only the shape model cards have is read
// here: a mapping of top-level keys whose values are scalars (plain, also folded over several lines;
// 'single' or "double" quoted on one line), flow lists [a, b] (over several lines too) or block lists
// (- a), list items that are scalars or one-level mappings. A key whose value is written another way
// (block scalars | and >, quoted scalars over several lines, anchors, tags, nested mappings) is left out
// and named in `skipped`; so is a value YAML reads as a number, boolean or date where the converter
// wants text (the converter fails on those). Keys the metadata does not use are not parsed. Nothing here
// traps or fails: a card that cannot be read is left out, and `skipped` says so.

/// A value of the model card: what YAML 1.1 (PyYAML's safe_load) makes of it, as far as the keys need.
@_spi(Testing) public enum ModelCardValue {
    case null
    case string(String)
    /// A boolean, number or date: not text, so not written.
    case other
    case list([ModelCardValue])
    case map([(key: String, value: ModelCardValue)])

    @_spi(Testing) public var string: String? { if case .string(let s) = self { return s }; return nil }
}

@_spi(Testing) public struct ModelCard {
    /// Top-level keys in order, the last of a repeated key winning (as PyYAML does).
    @_spi(Testing) public private(set) var entries: [(key: String, value: ModelCardValue)] = []
    /// Keys used by the metadata whose values were not read (an unsupported YAML form, or not text).
    @_spi(Testing) public private(set) var skipped: [String] = []
    /// Card keys gguf-py's metadata heuristics read.
    static let used: Set<String> = [
        "name", "author", "version", "organization", "description", "finetune", "basename", "size_label", "url", "doi",
        "uuid", "repo_url", "model_name", "model_author", "model_version", "model_organization", "model_description",
        "model_finetune", "model_basename", "model_size_label", "model_url", "model_doi", "model_uuid", "model_repo_url",
        "model_creator", "model_type", "base_model", "base_models", "base_model_sources", "datasets", "dataset",
        "dataset_sources", "license", "license_name", "license_link", "tags", "pipeline_tag", "languages", "language",
    ]
    static let maxBytes = 1 << 20

    init() {}

    /// The card of `folder` (none: no README.md, or no front matter). A README.md that cannot be read
    /// (over 1 MiB, say) is no error: the card is left out and `skipped` says why.
    init(folder: String) {
        let path = folder + "/README.md"
        guard puna_path_exists(path) != 0 else { return }
        var text: [UInt8] = []
        do throws(PunaError) {
            text = try withInputBytes(path, maxBytes: ModelCard.maxBytes, limitNote: "Puna's limit for a model card") { Array($0) }
        } catch {
            skipped = ["README.md (\(error.message))"]
            return
        }
        read(text)
    }

    @_spi(Testing) public init(markdown text: [UInt8]) { read(text) }

    private mutating func read(_ text: [UInt8]) {
        // Lines as Python's str.splitlines() cuts them at \n, \r\n and \r.
        var lines: [[UInt8]] = []
        var current: [UInt8] = []
        var i = 0
        while i < text.count {
            let c = text[i]
            if c == 10 || c == 13 {
                lines.append(current)
                current = []
                if c == 13, i + 1 < text.count, text[i + 1] == 10 { i += 1 }
            } else {
                current.append(c)
            }
            i += 1
        }
        if !current.isEmpty { lines.append(current) }
        guard let first = lines.first, first == Array("---".utf8) else { return }
        var yaml: [[UInt8]] = []
        for line in lines.dropFirst() {
            if line == Array("---".utf8) { break }
            // gguf-py's two rewrites of the text before parsing: "- no\n" becomes "- \"no\"\n" (the Norway
            // problem), then each tab two spaces.
            var quotedNo = line
            if line.count >= 4, Array(line.suffix(4)) == Array("- no".utf8) { quotedNo = Array(line.dropLast(2)) + Array("\"no\"".utf8) }
            var l: [UInt8] = []
            for c in quotedNo { if c == 9 { l += [32, 32] } else { l.append(c) } }
            yaml.append(l)
        }
        parse(yaml)
    }

    @_spi(Testing) public subscript(key: String) -> ModelCardValue? { entries.last(where: { $0.key == key })?.value }
    func has(_ key: String) -> Bool { entries.contains { $0.key == key } }

    // MARK: YAML, the part model cards use

    static func indent(_ line: [UInt8]) -> Int { line.prefix { $0 == 32 }.count }
    static func isBlankOrComment(_ line: [UInt8]) -> Bool {
        let rest = line.drop { $0 == 32 }
        return rest.isEmpty || rest.first == UInt8(ascii: "#")
    }
    static func isSequenceItem(_ line: [UInt8]) -> Bool {
        let rest = Array(line.drop { $0 == 32 })
        return rest == [UInt8(ascii: "-")] || rest.starts(with: [UInt8(ascii: "-"), 32])
    }

    private mutating func parse(_ lines: [[UInt8]]) {
        var i = 0
        while i < lines.count {
            let line = lines[i]
            if ModelCard.isBlankOrComment(line) { i += 1; continue }
            // A document that is not a mapping at column 0: gguf-py ignores the card (a list, a scalar), or
            // it is YAML this reader does not follow.
            guard ModelCard.indent(line) == 0, !ModelCard.isSequenceItem(line), let entry = ModelCard.splitKey(line) else {
                entries = []
                skipped = ["the whole front matter (its line \(i + 1) is not a top-level `key: value`)"]
                return
            }
            let (key, rest) = entry
            var block: [[UInt8]] = []
            i += 1
            while i < lines.count {
                let next = lines[i]
                if ModelCard.isBlankOrComment(next) || ModelCard.indent(next) > 0 || ModelCard.isSequenceItem(next) {
                    block.append(next)
                    i += 1
                } else {
                    break
                }
            }
            entries.removeAll { $0.key == key }
            guard ModelCard.used.contains(key) else { continue }
            if let value = ModelCard.value(rest, block) {
                entries.append((key, value))
                skipped.removeAll { $0 == key }
            } else if !skipped.contains(key) {
                skipped.append(key)
            }
        }
    }

    /// "key: rest" (the key plain or quoted), nil when the line is not a mapping entry.
    static func splitKey(_ line: [UInt8]) -> (String, [UInt8])? {
        if line.first == UInt8(ascii: "\"") || line.first == UInt8(ascii: "'") {
            guard let q = quoted(line, 0) else { return nil }
            let (key, end) = q
            var j = end
            while j < line.count, line[j] == 32 { j += 1 }
            guard j < line.count, line[j] == UInt8(ascii: ":") else { return nil }
            guard j + 1 == line.count || line[j + 1] == 32 else { return nil }
            return (key, Array(line[(j + 1)...]))
        }
        var j = 0
        while j < line.count {
            if line[j] == UInt8(ascii: ":"), j + 1 == line.count || line[j + 1] == 32 {
                var end = j
                while end > 0, line[end - 1] == 32 { end -= 1 }
                guard end > 0 else { return nil }
                return (String(decoding: line[..<end], as: UTF8.self), Array(line[(j + 1)...]))
            }
            if line[j] == UInt8(ascii: "#"), j > 0, line[j - 1] == 32 { return nil }
            j += 1
        }
        return nil
    }

    /// A quoted scalar starting at `start`: its text and the index after the closing quote; nil when it does not
    /// close on this line or holds an escape this reader does not take.
    static func quoted(_ s: [UInt8], _ start: Int) -> (String, Int)? {
        let q = s[start]
        var out: [UInt8] = []
        var j = start + 1
        while j < s.count {
            let c = s[j]
            if q == UInt8(ascii: "'") {
                if c == q {
                    if j + 1 < s.count, s[j + 1] == q { out.append(q); j += 2; continue }
                    return (String(decoding: out, as: UTF8.self), j + 1)
                }
                out.append(c); j += 1
                continue
            }
            if c == q { return (String(decoding: out, as: UTF8.self), j + 1) }
            if c == UInt8(ascii: "\\") {
                guard j + 1 < s.count else { return nil }
                let e = s[j + 1]
                switch e {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                case UInt8(ascii: "n"): out.append(10)
                case UInt8(ascii: "t"): out.append(9)
                case UInt8(ascii: "r"): out.append(13)
                case UInt8(ascii: "0"): out.append(0)
                case 32: out.append(32)
                case UInt8(ascii: "u"), UInt8(ascii: "x"), UInt8(ascii: "U"):
                    let n = e == UInt8(ascii: "x") ? 2 : e == UInt8(ascii: "u") ? 4 : 8
                    guard j + 2 + n <= s.count else { return nil }
                    var v: UInt32 = 0
                    for d in s[(j + 2)..<(j + 2 + n)] {
                        guard let h = hexValue(d) else { return nil }
                        v = v << 4 | UInt32(h)
                    }
                    guard let utf8 = utf8Bytes(v) else { return nil }
                    out += utf8
                    j += 2 + n
                    continue
                default: return nil
                }
                j += 2
                continue
            }
            out.append(c); j += 1
        }
        return nil
    }

    /// The UTF-8 encoding of a Unicode scalar value (nil for surrogates and values past U+10FFFF).
    static func utf8Bytes(_ v: UInt32) -> [UInt8]? {
        switch v {
        case 0..<0x80: return [UInt8(v)]
        case 0x80..<0x800: return [UInt8(0xC0 | v >> 6), UInt8(0x80 | v & 0x3F)]
        case 0xD800..<0xE000: return nil
        case 0x800..<0x10000: return [UInt8(0xE0 | v >> 12), UInt8(0x80 | v >> 6 & 0x3F), UInt8(0x80 | v & 0x3F)]
        case 0x10000..<0x110000:
            return [UInt8(0xF0 | v >> 18), UInt8(0x80 | v >> 12 & 0x3F), UInt8(0x80 | v >> 6 & 0x3F), UInt8(0x80 | v & 0x3F)]
        default: return nil
        }
    }

    static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: return c - 48
        case 65...70: return c - 55
        case 97...102: return c - 87
        default: return nil
        }
    }

    /// Bytes without leading and trailing spaces.
    static func trimmed(_ s: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        var a = s.startIndex, b = s.endIndex
        while a < b, s[a] == 32 { a += 1 }
        while b > a, s[b - 1] == 32 { b -= 1 }
        return s[a..<b]
    }

    /// A scalar or flow list written on one line (a comment after it allowed); nil when it is something else
    /// or does not end on the line.
    static func inline(_ raw: ArraySlice<UInt8>) -> ModelCardValue? {
        let s = Array(trimmed(raw))
        guard let c = s.first else { return .null }
        if c == UInt8(ascii: "\"") || c == UInt8(ascii: "'") {
            guard let q = quoted(s, 0) else { return nil }
            let (text, end) = q
            let rest = trimmed(s[end...])
            guard rest.isEmpty || rest.first == UInt8(ascii: "#") else { return nil }
            return .string(text)
        }
        if c == UInt8(ascii: "[") {
            var items: [ModelCardValue] = []
            var j = 1
            while true {
                while j < s.count, s[j] == 32 { j += 1 }
                guard j < s.count else { return nil }
                if s[j] == UInt8(ascii: "]") { j += 1; break }
                if s[j] == UInt8(ascii: "\"") || s[j] == UInt8(ascii: "'") {
                    guard let q = quoted(s, j) else { return nil }
                    let (text, end) = q
                    items.append(.string(text))
                    j = end
                } else {
                    var k = j
                    while k < s.count, s[k] != UInt8(ascii: ","), s[k] != UInt8(ascii: "]") {
                        if "[]{}#&*!|>".utf8.contains(s[k]) { return nil }
                        k += 1
                    }
                    items.append(plain(trimmed(s[j..<k])))
                    j = k
                }
                while j < s.count, s[j] == 32 { j += 1 }
                guard j < s.count else { return nil }
                if s[j] == UInt8(ascii: ",") { j += 1; continue }
                guard s[j] == UInt8(ascii: "]") else { return nil }
                j += 1
                break
            }
            let rest = trimmed(s[j...])
            guard rest.isEmpty || rest.first == UInt8(ascii: "#") else { return nil }
            return .list(items)
        }
        if "{&*!|>%@`".utf8.contains(c) { return nil }
        // A plain scalar ends at " #".
        var end = s.count
        for j in 1..<max(s.count, 1) where s[j] == UInt8(ascii: "#") && s[j - 1] == 32 { end = j; break }
        let text = trimmed(s[..<end])
        // "key: value" inside a plain scalar would be a nested mapping.
        for j in text.indices where text[j] == UInt8(ascii: ":") && (j + 1 == text.endIndex || text[j + 1] == 32) { return nil }
        return plain(text)
    }

    /// What PyYAML's YAML 1.1 resolver makes of a plain scalar: null, text, or something else.
    static func plain(_ s: ArraySlice<UInt8>) -> ModelCardValue {
        let text = String(decoding: s, as: UTF8.self)
        if ["", "~", "null", "Null", "NULL"].contains(text) { return .null }
        if ["yes", "Yes", "YES", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE",
            "on", "On", "ON", "off", "Off", "OFF"].contains(text) { return .other }
        if looksNumeric(Array(s)) { return .other }
        return .string(text)
    }

    /// Integers, floats and timestamps as PyYAML's YAML 1.1 resolver recognizes them (its regular
    /// expressions, spelled out).
    static func looksNumeric(_ s: [UInt8]) -> Bool { isInt(s) || isFloat(s) || isTimestamp(s) }

    static func isDigit(_ c: UInt8) -> Bool { c >= 48 && c <= 57 }

    /// Index after a run of bytes satisfying `ok` from `i` (== i when there is none).
    static func run(_ s: [UInt8], _ i: Int, _ ok: (UInt8) -> Bool) -> Int {
        var j = i
        while j < s.count, ok(s[j]) { j += 1 }
        return j
    }

    /// (":" [0-5]?[0-9])+ from `i`: the index after it, nil when there is not one group.
    static func sexagesimal(_ s: [UInt8], _ i: Int) -> Int? {
        var j = i, groups = 0
        while j < s.count, s[j] == UInt8(ascii: ":") {
            let k = run(s, j + 1, isDigit)
            guard k - (j + 1) == 1 || (k - (j + 1) == 2 && s[j + 1] <= UInt8(ascii: "5")) else { return nil }
            j = k
            groups += 1
        }
        return groups > 0 ? j : nil
    }

    /// [-+]?(0b[01_]+ | 0[0-7_]+ | 0 | [1-9][0-9_]* | 0x[0-9a-fA-F_]+ | [1-9][0-9_]*(:[0-5]?[0-9])+)
    static func isInt(_ s: [UInt8]) -> Bool {
        var i = 0
        if i < s.count, s[i] == UInt8(ascii: "+") || s[i] == UInt8(ascii: "-") { i += 1 }
        guard i < s.count, isDigit(s[i]) else { return false }
        if s[i] == UInt8(ascii: "0") {
            if i + 1 == s.count { return true }
            let next = s[i + 1]
            if next == UInt8(ascii: "b") { return i + 2 < s.count && run(s, i + 2, { $0 == 48 || $0 == 49 || $0 == 95 }) == s.count }
            if next == UInt8(ascii: "x") { return i + 2 < s.count && run(s, i + 2, { hexValue($0) != nil || $0 == 95 }) == s.count }
            return run(s, i + 1, { ($0 >= 48 && $0 <= 55) || $0 == 95 }) == s.count
        }
        let j = run(s, i, { isDigit($0) || $0 == 95 })
        if j == s.count { return true }
        return sexagesimal(s, j) == s.count
    }

    /// [-+]?[0-9][0-9_]*\.[0-9_]*([eE][-+][0-9]+)? | \.[0-9_]+([eE][-+][0-9]+)? |
    /// [-+]?[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]* | [-+]?\.(inf|Inf|INF) | \.(nan|NaN|NAN)
    static func isFloat(_ s: [UInt8]) -> Bool {
        func exponentEnds(_ j: Int) -> Bool {
            if j == s.count { return true }
            guard s[j] == UInt8(ascii: "e") || s[j] == UInt8(ascii: "E"), j + 1 < s.count,
                  s[j + 1] == UInt8(ascii: "+") || s[j + 1] == UInt8(ascii: "-") else { return false }
            let k = run(s, j + 2, isDigit)
            return k > j + 2 && k == s.count
        }
        let text = String(decoding: s, as: UTF8.self)
        if [".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF"].contains(text) { return true }
        if s.first == UInt8(ascii: ".") {
            let j = run(s, 1, { isDigit($0) || $0 == 95 })
            return j > 1 && exponentEnds(j)
        }
        var i = 0
        if i < s.count, s[i] == UInt8(ascii: "+") || s[i] == UInt8(ascii: "-") { i += 1 }
        guard i < s.count, isDigit(s[i]) else { return false }
        var j = run(s, i + 1, { isDigit($0) || $0 == 95 })
        if j < s.count, s[j] == UInt8(ascii: "."), exponentEnds(run(s, j + 1, { isDigit($0) || $0 == 95 })) { return true }
        guard let k = sexagesimal(s, j), k < s.count, s[k] == UInt8(ascii: ".") else { return false }
        j = run(s, k + 1, { isDigit($0) || $0 == 95 })
        return j == s.count
    }

    /// [0-9]{4}-[0-9]{2}-[0-9]{2}, or [0-9]{4}-[0-9]{1,2}-[0-9]{1,2} followed by
    /// ([Tt]|[ \t]+)[0-9]{1,2}:[0-9]{2}:[0-9]{2}(\.[0-9]*)?([ \t]*(Z|[-+][0-9]{1,2}(:[0-9]{2})?))?
    static func isTimestamp(_ s: [UInt8]) -> Bool {
        func digits(_ i: Int, _ least: Int, _ most: Int) -> Int? {
            let j = run(s, i, isDigit)
            return j - i >= least && j - i <= most ? j : nil
        }
        guard let y = digits(0, 4, 4), y < s.count, s[y] == UInt8(ascii: "-"),
              let m = digits(y + 1, 1, 2), m < s.count, s[m] == UInt8(ascii: "-"),
              let d = digits(m + 1, 1, 2) else { return false }
        if d == s.count { return m - y == 3 && d - m == 3 }
        var i = d
        if s[i] == UInt8(ascii: "T") || s[i] == UInt8(ascii: "t") { i += 1 } else {
            let j = run(s, i, { $0 == 32 || $0 == 9 })
            guard j > i else { return false }
            i = j
        }
        guard let h = digits(i, 1, 2), h < s.count, s[h] == UInt8(ascii: ":"),
              let mi = digits(h + 1, 2, 2), mi < s.count, s[mi] == UInt8(ascii: ":"),
              var j = digits(mi + 1, 2, 2) else { return false }
        if j < s.count, s[j] == UInt8(ascii: ".") { j = run(s, j + 1, isDigit) }
        j = run(s, j, { $0 == 32 || $0 == 9 })
        if j == s.count { return true }
        if s[j] == UInt8(ascii: "Z") { return j + 1 == s.count }
        guard s[j] == UInt8(ascii: "+") || s[j] == UInt8(ascii: "-"), let tz = digits(j + 1, 1, 2) else { return false }
        if tz == s.count { return true }
        guard s[tz] == UInt8(ascii: ":"), let tm = digits(tz + 1, 2, 2) else { return false }
        return tm == s.count
    }

    /// A value that goes on over the following (deeper) lines: a flow list, or a plain scalar folded as YAML
    /// folds it (a line break between two lines is a space, each empty line a newline). Comments inside,
    /// quoted scalars and anything else: nil.
    static func continued(_ head: [UInt8], _ block: [[UInt8]]) -> ModelCardValue? {
        var lines: [ArraySlice<UInt8>] = [head[...]]
        for line in block {
            guard indent(line) > 0 || isBlankOrComment(line) else { return nil }
            let t = trimmed(line[...])
            guard t.first != UInt8(ascii: "#") else { return nil }
            lines.append(t)
        }
        while let last = lines.last, last.isEmpty { lines.removeLast() }
        if head.first == UInt8(ascii: "[") {
            var joined: [UInt8] = []
            for (i, l) in lines.enumerated() { if i > 0 { joined.append(32) }; joined += l }
            return inline(joined[...])
        }
        guard let c = head.first, !"\"'{&*!|>%@`#".utf8.contains(c) else { return nil }
        var folded: [UInt8] = []
        var pendingBreaks = 0
        for (i, l) in lines.enumerated() {
            if l.isEmpty { pendingBreaks += 1; continue }
            // ": " or " #" would make the line a mapping entry or end the scalar in a comment.
            for j in l.indices where (l[j] == UInt8(ascii: ":") && (j + 1 == l.endIndex || l[j + 1] == 32))
                || (l[j] == UInt8(ascii: "#") && j > l.startIndex && l[j - 1] == 32) { return nil }
            if i > 0 { folded += pendingBreaks == 0 ? [32] : [UInt8](repeating: 10, count: pendingBreaks) }
            pendingBreaks = 0
            folded += l
        }
        return plain(folded[...])
    }

    /// The value of a top-level key: `rest` after the colon, or the block of lines under it.
    static func value(_ rest: [UInt8], _ block: [[UInt8]]) -> ModelCardValue? {
        let content = block.filter { !isBlankOrComment($0) }
        let head = trimmed(rest[...])
        if !head.isEmpty {
            if content.isEmpty { return inline(head) }
            return continued(Array(head), block)
        }
        guard let first = content.first else { return .null }
        guard isSequenceItem(first) else { return nil }   // a nested mapping
        let itemIndent = indent(first)
        var items: [ModelCardValue] = []
        var k = 0
        while k < content.count {
            let line = content[k]
            guard indent(line) == itemIndent, isSequenceItem(line) else { return nil }
            let body = Array(line.dropFirst(itemIndent + 1))
            k += 1
            // Lines deeper than the dash belong to this item: a mapping item's further keys.
            var more: [[UInt8]] = []
            while k < content.count, indent(content[k]) > itemIndent { more.append(content[k]); k += 1 }
            let text = trimmed(body[...])
            if inline(text) == nil, let member = splitKey(Array(text)) {
                let (key, after) = member
                // "- key: value" and "  key: value" lines: a one-level mapping.
                let column = itemIndent + 1 + (body.count - body.drop { $0 == 32 }.count)
                var members: [(key: String, value: ModelCardValue)] = []
                guard let v = inline(after[...]) else { return nil }
                members.append((key, v))
                for m in more {
                    guard indent(m) == column, let kv = splitKey(Array(m.dropFirst(column))), let parsed = inline(kv.1[...]) else { return nil }
                    let mk = kv.0
                    members.removeAll { $0.key == mk }
                    members.append((mk, parsed))
                }
                items.append(.map(members))
            } else {
                guard more.isEmpty, let v = inline(text) else { return nil }
                items.append(v)
            }
        }
        return .list(items)
    }
}

/// The general.* values gguf-py's metadata heuristics take from a model card (before the ones from
/// config.json's _name_or_path and the folder's name), and the keys they become, in gguf-py's order.
@_spi(Testing) public struct ModelCardMetadata {
    /// nil: not set; "": set by the card but not written (empty, or not text).
    @_spi(Testing) public var name: String? = nil, author: String? = nil, version: String? = nil
    var organization: String? = nil
    @_spi(Testing) public var description: String? = nil
    var finetune: String? = nil, basename: String? = nil, sizeLabel: String? = nil
    var sourceURL: String? = nil, sourceDOI: String? = nil, sourceUUID: String? = nil, sourceRepoURL: String? = nil
    @_spi(Testing) public var license: String? = nil, licenseName: String? = nil, licenseLink: String? = nil
    @_spi(Testing) public var baseModels: [[(key: String, value: String)]]? = nil
    var datasets: [[(key: String, value: String)]]? = nil
    @_spi(Testing) public var tags: [String]? = nil
    @_spi(Testing) public var languages: [String]? = nil
    /// Card keys whose values were not text where text is wanted, so not written.
    @_spi(Testing) public var skipped: [String] = []

    init() {}

    @_spi(Testing) public init(card: ModelCard, parameters: Int) {
        var notText = card.skipped
        // A card key sets a field that is still unset: text as it is; null leaves it unset; anything else
        // (a number, a list) sets it to nothing written (gguf-py would fail on it).
        func pick(_ current: String?, _ key: String) -> String? {
            guard current == nil, let value = card[key] else { return current }
            switch value {
            case .null: return nil
            case .string(let s): return s
            default:
                notText.append(key)
                return ""
            }
        }
        // A list key: a text value appended, a list's items appended (all text, else the key is not written).
        func appended(_ list: [String]?, _ key: String) -> [String]? {
            guard let value = card[key] else { return list }
            switch value {
            case .string(let s): return (list ?? []) + [s]
            case .list(let items):
                let texts = items.compactMap { $0.string }
                guard texts.count == items.count else { notText.append(key); return list }
                return (list ?? []) + texts
            default: return list
            }
        }
        // llama.cpp's own card keys, then the same with model_ in front, then those other model cards use.
        for prefix in ["", "model_"] {
            name = pick(name, prefix + "name")
            author = pick(author, prefix + "author")
            version = pick(version, prefix + "version")
            organization = pick(organization, prefix + "organization")
            description = pick(description, prefix + "description")
            finetune = pick(finetune, prefix + "finetune")
            basename = pick(basename, prefix + "basename")
            sizeLabel = pick(sizeLabel, prefix + "size_label")
            sourceURL = pick(sourceURL, prefix + "url")
            sourceDOI = pick(sourceDOI, prefix + "doi")
            sourceUUID = pick(sourceUUID, prefix + "uuid")
            sourceRepoURL = pick(sourceRepoURL, prefix + "repo_url")
        }
        name = pick(name, "model_name")
        author = pick(author, "model_creator")
        basename = pick(basename, "model_type")
        // The first of the keys present counts, even when its value is null.
        if let value = card.has("base_model") ? card["base_model"] : card.has("base_models") ? card["base_models"] : card["base_model_sources"] {
            baseModels = ModelCardMetadata.sources(value, parameters: parameters)
        }
        if let value = card.has("datasets") ? card["datasets"] : card.has("dataset") ? card["dataset"] : card["dataset_sources"] {
            datasets = ModelCardMetadata.sources(value, parameters: parameters)
        }
        // A list of licenses is written joined by commas.
        if let value = card["license"] {
            switch value {
            case .null: break
            case .string(let s): license = s
            case .list(let items) where items.allSatisfy({ $0.string != nil }):
                license = items.compactMap { $0.string }.joined(separator: ",")
            default:
                license = ""
                notText.append("license")
            }
        }
        licenseName = pick(licenseName, "license_name")
        licenseLink = pick(licenseLink, "license_link")
        tags = appended(appended(nil, "tags"), "pipeline_tag")
        languages = appended(appended(nil, "languages"), "language")
        skipped = notText
    }

    /// base_model / datasets entries: Hugging Face ids, URLs, or mappings of the entry's fields.
    static func sources(_ value: ModelCardValue, parameters: Int) -> [[(key: String, value: String)]] {
        var items: [ModelCardValue] = []
        switch value {
        case .string: items = [value]
        case .list(let list): items = list
        default: break
        }
        var out: [[(key: String, value: String)]] = []
        for item in items {
            var entry: [(key: String, value: String)] = []
            switch item {
            case .string(let id):
                let isURL = id.hasPrefix("http://") || id.hasPrefix("https://") || id.hasPrefix("ssh://")
                if isURL {
                    entry.append(("repo_url", id))
                    if let hubID = huggingFaceID(id) {
                        let parts = ConvertNaming.idParts(hubID, totalParameters: parameters)
                        if let n = parts.fullName { entry.append(("name", ConvertNaming.title(n))) }
                        if let o = parts.organization { entry.append(("organization", ConvertNaming.title(o))) }
                        if let v = parts.version { entry.append(("version", v)) }
                    }
                } else {
                    let parts = ConvertNaming.idParts(id, totalParameters: parameters)
                    if let n = parts.fullName { entry.append(("name", ConvertNaming.title(n))) }
                    if let o = parts.organization { entry.append(("organization", ConvertNaming.title(o))) }
                    if let v = parts.version { entry.append(("version", v)) }
                    if let o = parts.organization, let n = parts.fullName { entry.append(("repo_url", "https://huggingface.co/\(o)/\(n)")) }
                }
            case .map(let members):
                for (k, v) in members { if let s = v.string { entry.append((k, s)) } }
            default: break
            }
            out.append(entry)
        }
        return out
    }

    /// "org/name" of https?://huggingface.co/org/name (nothing after it).
    static func huggingFaceID(_ url: String) -> String? {
        guard url.utf8.count < 4096 else { return nil }
        var rest = Substring(url)
        if rest.hasPrefix("https://") { rest = rest.dropFirst(8) } else if rest.hasPrefix("http://") { rest = rest.dropFirst(7) } else { return nil }
        guard rest.hasPrefix("huggingface.co/") else { return nil }
        rest = rest.dropFirst(15)
        let parts = rest.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else { return nil }
        // Python's $ also matches before a final newline; a model card value has none.
        return String(rest)
    }

    static let fields = ["name", "author", "version", "organization", "description", "url", "doi", "uuid", "repo_url"]

    /// The keys after general.size_label, in gguf-py's order; empty texts and empty lists are not written.
    @_spi(Testing) public func keysAfterSizeLabel() -> [(String, GGUFValue)] {
        var keys: [(String, GGUFValue)] = []
        func text(_ key: String, _ value: String?) { if let value, !value.isEmpty { keys.append((key, .string(value))) } }
        text("general.license", license)
        text("general.license.name", licenseName)
        text("general.license.link", licenseLink)
        text("general.source.url", sourceURL)
        text("general.source.doi", sourceDOI)
        text("general.source.uuid", sourceUUID)
        text("general.source.repo_url", sourceRepoURL)
        for (prefix, list) in [("general.base_model", baseModels), ("general.dataset", datasets)] {
            guard let list else { continue }
            keys.append((prefix + ".count", .uint32(UInt32(clamping: list.count))))
            for (i, entry) in list.enumerated() {
                for field in ModelCardMetadata.fields {
                    if let value = entry.last(where: { $0.key == field })?.value { text("\(prefix).\(i).\(field)", value) }
                }
            }
        }
        if let tags, !tags.isEmpty { keys.append(("general.tags", .array(.string, tags.map { .string($0) }))) }
        if let languages, !languages.isEmpty { keys.append(("general.languages", .array(.string, languages.map { .string($0) }))) }
        return keys
    }
}
