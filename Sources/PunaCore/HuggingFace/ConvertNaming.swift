// The general.* naming keys `puna convert` derives from a model id ("org/Name-7B-Instruct-v0.2") and
// the parameter count, following the rules of gguf-py's metadata heuristics (the facts: which part of
// a dash-separated id is a version, a size label, a fine-tune or the base name). ASCII letters only:
// Python's str.title()/islower() on non-ASCII letters are not reproduced.

/// What a model id says about the model.
struct ModelIDParts {
    var fullName: String? = nil
    var organization: String? = nil
    var basename: String? = nil
    var finetune: String? = nil
    var version: String? = nil
    var sizeLabel: String? = nil
}

enum ConvertNaming {
    static func isDigit(_ c: UInt8) -> Bool { c >= 48 && c <= 57 }
    static func isLetter(_ c: UInt8) -> Bool { (c >= 65 && c <= 90) || (c >= 97 && c <= 122) }
    static func lower(_ c: UInt8) -> UInt8 { (c >= 65 && c <= 90) ? c + 32 : c }
    static func upper(_ c: UInt8) -> UInt8 { (c >= 97 && c <= 122) ? c - 32 : c }
    static func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    /// Digits from `i`; returns the index after them (== i when there are none).
    static func skipDigits(_ s: [UInt8], _ i: Int) -> Int {
        var j = i
        while j < s.count, isDigit(s[j]) { j += 1 }
        return j
    }

    /// (v|iter)?\d+(\.\d+)*, whole string, any case.
    static func isVersion(_ part: [UInt8]) -> Bool {
        let s = part.map(lower)
        var i = 0
        if s.starts(with: Array("iter".utf8)) { i = 4 } else if s.first == UInt8(ascii: "v") { i = 1 }
        var j = skipDigits(s, i)
        guard j > i else { return false }
        while j < s.count {
            guard s[j] == UInt8(ascii: ".") else { return false }
            let k = skipDigits(s, j + 1)
            guard k > j + 1 else { return false }
            j = k
        }
        return true
    }

    /// i?q\d(_\w)* or b?fp?(16|32), whole string, any case: a quantization or float type.
    static func isTypeName(_ part: [UInt8]) -> Bool {
        let s = part.map(lower)
        var i = 0
        if s.first == UInt8(ascii: "i") { i = 1 }
        if i < s.count, s[i] == UInt8(ascii: "q"), i + 1 < s.count, isDigit(s[i + 1]) {
            var j = i + 2
            while j + 1 < s.count, s[j] == UInt8(ascii: "_"), isLetter(s[j + 1]) || isDigit(s[j + 1]) || s[j + 1] == UInt8(ascii: "_") { j += 2 }
            if j == s.count { return true }
        }
        var j = 0
        if s.first == UInt8(ascii: "b") { j = 1 }
        guard j < s.count, s[j] == UInt8(ascii: "f") else { return false }
        j += 1
        if j < s.count, s[j] == UInt8(ascii: "p") { j += 1 }
        let rest = Array(s[j...])
        return rest == Array("16".utf8) || rest == Array("32".utf8)
    }

    /// (([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl), whole string, any case.
    static func isSizeLabel(_ part: [UInt8]) -> Bool {
        let s = part.map(lower)
        for word in ["small", "mini", "medium", "large", "xl", "xxl"] where s == Array(word.utf8) { return true }
        var i = 0
        if s.first == UInt8(ascii: "a") {
            i = 1
        } else {
            let d = skipDigits(s, 0)
            if d > 0, d < s.count, s[d] == UInt8(ascii: "x") { i = d + 1 }
        }
        var j = skipDigits(s, i)
        guard j > i else { return false }
        if j < s.count, s[j] == UInt8(ascii: ".") || s[j] == UInt8(ascii: "_") {
            let k = skipDigits(s, j + 1)
            if k > j + 1 { j = k }
        }
        guard j < s.count, "kmbt".utf8.contains(s[j]) else { return false }
        j += 1
        if j < s.count, isDigit(s[j]) { j += 1 }
        return j == s.count
    }

    static func isFinetuneWord(_ part: [UInt8]) -> Bool {
        let s = part.map(lower)
        return ["chat", "instruct", "vision", "lora"].contains { s == Array($0.utf8) }
    }

    /// gguf-py's reading of a model id, given the model's parameter count.
    static func idParts(_ modelID: String, totalParameters: Int) -> ModelIDParts {
        var result = ModelIDParts()
        if modelID.utf8.contains(UInt8(ascii: " ")) {
            result.fullName = modelID
            return result
        }
        let bytes = Array(modelID.utf8)
        var name = bytes
        if let slash = bytes.firstIndex(of: UInt8(ascii: "/")) {
            let org = Array(bytes[..<slash])
            name = Array(bytes[(slash + 1)...])
            if !(org.first == UInt8(ascii: ".")) { result.organization = text(org) }
        }
        result.fullName = text(name)
        var parts: [[UInt8]] = name.split(separator: UInt8(ascii: "-"), omittingEmptySubsequences: true).map { Array($0) }
        // Each part's tags: basename, size, finetune, version, type.
        var tags: [Set<String>] = parts.map { _ in [] }
        for i in 0..<parts.count {
            let part = parts[i]
            if isVersion(part) {
                tags[i].insert("version")
            } else if isTypeName(part) {
                tags[i].insert("type")
                parts[i] = part.map(upper)
            } else if i > 0, isSizeLabel(part) {
                var p = part.map { $0 == UInt8(ascii: "_") ? UInt8(ascii: ".") : $0 }
                if let last = p.last, isDigit(last), p.count >= 2 {   // bloom-7b1 → 7.1b
                    let unit = p[p.count - 2]
                    p = Array(p[..<(p.count - 2)]) + [UInt8(ascii: "."), last, unit]
                }
                if p.count > 1, isDigit(p[p.count - 2]), "kmbt".utf8.contains(p[p.count - 1]) {
                    p[p.count - 1] = upper(p[p.count - 1])
                }
                if totalParameters > 0, let labelled = labelValue(p) {
                    // A "size" far from the real one is most likely a context length: a fine-tune tag.
                    let total = Double(totalParameters)
                    if (labelled - total).magnitude > Double(7 * totalParameters / 8) {
                        tags[i].insert("finetune")
                        p[p.count - 1] = lower(p[p.count - 1])
                    }
                }
                if tags[i].isEmpty { tags[i].insert("size_label") }
                parts[i] = p
            } else if i > 0, isFinetuneWord(part) {
                tags[i].insert("finetune")
            }
        }
        // Word sizes (small, large …) give way to a numeric one.
        if parts.indices.contains(where: { tags[$0].contains("size_label") && parts[$0].contains(where: isDigit) }) {
            for i in parts.indices where tags[i].contains("size_label") && parts[i].allSatisfy(isLetter) {
                tags[i].remove("size_label")
            }
        }
        var atStart = true
        for i in parts.indices {
            if atStart && ((tags[i].isEmpty && isLetter(parts[i].first ?? 0)) || tags[i].contains("version")) {
                tags[i].insert("basename")
            } else {
                atStart = false
                if tags[i].isEmpty { tags[i].insert("finetune") }
            }
        }
        for i in parts.indices.reversed() {
            guard tags[i].contains("basename"), tags[i].count > 1 else { break }
            tags[i].remove("basename")
        }
        func joined(_ tag: String, excluding: String? = nil, unique: Bool = false) -> String? {
            var out: [String] = []
            for i in parts.indices where tags[i].contains(tag) && !(excluding.map { tags[i].contains($0) } ?? false) {
                let t = text(parts[i])
                if unique && out.contains(t) { continue }
                out.append(t)
            }
            return out.isEmpty ? nil : out.joined(separator: "-")
        }
        result.basename = joined("basename")
        result.sizeLabel = joined("size_label", unique: true)
        result.finetune = joined("finetune")
        result.version = joined("version", excluding: "basename")
        if result.sizeLabel == nil && result.finetune == nil && result.version == nil { result.basename = nil }
        return result
    }

    /// "7.1B" → 7.1e9; nil when the part before the unit is not a plain number (as Python's float() fails).
    static func labelValue(_ p: [UInt8]) -> Double? {
        guard p.count >= 2 else { return nil }
        let number = p[..<(p.count - 1)]
        var value = 0.0, scale = 1.0, seenPoint = false, digits = 0
        for c in number {
            if isDigit(c) {
                digits += 1
                if seenPoint { scale /= 10; value += Double(c - 48) * scale } else { value = value * 10 + Double(c - 48) }
            } else if c == UInt8(ascii: "."), !seenPoint {
                seenPoint = true
            } else {
                return nil
            }
        }
        guard digits > 0 else { return nil }
        switch p[p.count - 1] {
        case UInt8(ascii: "K"): return value * 1e3
        case UInt8(ascii: "M"): return value * 1e6
        case UInt8(ascii: "B"): return value * 1e9
        case UInt8(ascii: "T"): return value * 1e12
        default: return value / 1000   // a lowercase unit is not found in " KMBT": 1000^-1
        }
    }

    /// "llama-2-7b-chat" → "Llama 2 7b Chat": each all-lowercase word title-cased unless it is a
    /// version (v1.2) or starts with a digit.
    static func title(_ id: String) -> String {
        var words: [String] = []
        let spaced = Array(id.utf8).map { $0 == UInt8(ascii: "-") ? UInt8(ascii: " ") : $0 }
        for raw in spaced.split(whereSeparator: { $0 == 32 || $0 == 9 || $0 == 10 || $0 == 13 }) {
            let w = Array(raw)
            let hasLower = w.contains { $0 >= 97 && $0 <= 122 }
            let hasUpper = w.contains { $0 >= 65 && $0 <= 90 }
            let isLowerWord = hasLower && !hasUpper
            let versionLike = (w.first == UInt8(ascii: "v") && w.count > 1 && isVersion(w) && isDigit(w[1])) || isDigit(w.first ?? 0)
            if isLowerWord && !versionLike {
                var out: [UInt8] = []
                var previousLetter = false
                for c in w {
                    out.append(isLetter(c) ? (previousLetter ? lower(c) : upper(c)) : c)
                    previousLetter = isLetter(c)
                }
                words.append(text(out))
            } else {
                words.append(text(w))
            }
        }
        return words.joined(separator: " ")
    }

    /// Parameter count as gguf-py's size label: "984K", "1.1B", "7.2B" (two significant digits at least).
    static func sizeLabel(parameters: Int) -> String {
        let n = Double(parameters)
        let scaled: Double, suffix: String
        if n > 1e12 { scaled = n * 1e-12; suffix = "T" }
        else if n > 1e9 { scaled = n * 1e-9; suffix = "B" }
        else if n > 1e6 { scaled = n * 1e-6; suffix = "M" }
        else { scaled = n * 1e-3; suffix = "K" }
        let whole = roundedDecimal(scaled, decimals: 0)
        let wholeDigits = whole == "0" ? 0 : whole.utf8.count
        return roundedDecimal(scaled, decimals: max(2 - wholeDigits, 0)) + suffix
    }

    /// The exact binary value of `x` (finite, >= 0, < 2^53) rounded half-to-even to `decimals`
    /// (0...3) places, as Python's format() and round() do.
    static func roundedDecimal(_ x: Double, decimals: Int) -> String {
        guard x.isFinite, x >= 0, x < 9e15 else { return "0" }
        var power: UInt64 = 1
        for _ in 0..<decimals { power *= 10 }
        let significand = x.significandBitPattern | (x == 0 ? 0 : (1 << 52))
        let exponent = Int(x.exponent) - 52
        var q: UInt64
        if x == 0 {
            q = 0
        } else if exponent >= 0 {
            q = (significand << UInt64(exponent)) * power
        } else {
            let shift = -exponent
            if shift >= 64 {
                q = 0
            } else {
                // significand < 2^53, power <= 1000 < 2^10: the product fits.
                let product = significand * power
                q = product >> UInt64(shift)
                let remainder = product & ((1 << UInt64(shift)) - 1)
                let half: UInt64 = 1 << UInt64(shift - 1)
                if remainder > half || (remainder == half && q & 1 == 1) { q += 1 }
            }
        }
        var digits = "\(q)"
        if decimals == 0 { return digits }
        while digits.utf8.count <= decimals { digits = "0" + digits }
        let cut = digits.utf8.count - decimals
        let bytes = Array(digits.utf8)
        return text(Array(bytes[..<cut])) + "." + text(Array(bytes[cut...]))
    }
}
