/// jinja2's filters and tests, Python's str/dict methods, and HF's `tojson`.
extension JinjaRenderer {
    static let filterNames: Set<String> = [
        "abs", "attr", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first", "float", "format",
        "indent", "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min", "reject",
        "rejectattr", "replace", "reverse", "round", "safe", "select", "selectattr", "sort", "string", "sum",
        "title", "tojson", "trim", "unique", "upper", "wordcount", "center", "batch",
    ]

    static let testNames: Set<String> = [
        "defined", "undefined", "none", "string", "mapping", "iterable", "sequence", "number", "integer", "float",
        "boolean", "true", "false", "in", "eq", "equalto", "==", "ne", "!=", "lt", "<", "lessthan", "le", "<=",
        "gt", ">", "greaterthan", "ge", ">=", "odd", "even", "divisibleby", "sameas", "callable", "lower", "upper",
        "escaped", "filter", "test",
    ]

    // MARK: tests

    func applyTest(_ name: String, _ v: JinjaValue, _ args: [JinjaValue], line: Int) throws(PunaError) -> Bool {
        func other() throws(PunaError) -> JinjaValue {
            guard let a = args.first else { throw error(line, "test '\(name)' needs an argument") }
            return a
        }
        switch name {
        case "defined": return !v.isUndefined
        case "undefined": return v.isUndefined
        case "none": return v.isNone
        case "string": if case .string = v { return true } else { return false }
        case "mapping": if case .dict = v { return true } else { return false }
        case "iterable", "sequence":
            switch v {
            case .string, .list, .tuple, .dict, .undefined: return true
            case .iterator: return name == "iterable"
            default: return false
            }
        case "number": return v.numeric != nil
        case "integer": if case .int = v { return true } else { return false }
        case "float": if case .float = v { return true } else { return false }
        case "boolean": if case .bool = v { return true } else { return false }
        case "true": if case .bool(true) = v { return true } else { return false }
        case "false": if case .bool(false) = v { return true } else { return false }
        case "callable": if case .callable = v { return true } else { return false }
        case "in": return try contains(try other(), v, line: line)
        case "eq", "equalto", "==": return equal(v, try other())
        case "ne", "!=": return !equal(v, try other())
        case "lt", "<", "lessthan": return try compare(v, try other(), line: line, op: "<") < 0
        case "le", "<=": return try compare(v, try other(), line: line, op: "<=") <= 0
        case "gt", ">", "greaterthan": return try compare(v, try other(), line: line, op: ">") > 0
        case "ge", ">=": return try compare(v, try other(), line: line, op: ">=") >= 0
        case "odd", "even":
            guard let i = v.intValue else { throw error(line, "test '\(name)' needs an integer") }
            return (i % 2 != 0) == (name == "odd")
        case "divisibleby":
            guard let i = v.intValue, let n = try other().intValue, n != 0 else { throw error(line, "test 'divisibleby' needs non-zero integers") }
            return i % n == 0
        case "sameas":
            let o = try other()
            switch (v, o) {
            case (.none, .none): return true
            case (.bool(let x), .bool(let y)): return x == y
            case (.namespace(let x), .namespace(let y)): return x === y
            default: return false
            }
        case "lower", "upper":
            guard case .string(let s) = v else { return false }
            return name == "lower" ? s.lowercased() == s : s.uppercased() == s
        case "escaped": return false
        case "filter":
            guard case .string(let f) = try other() else { return false }
            return JinjaRenderer.filterNames.contains(f)
        case "test":
            guard case .string(let t) = try other() else { return false }
            return JinjaRenderer.testNames.contains(t)
        default: throw error(line, "unsupported test '\(name)'")
        }
    }

    // MARK: filters

    func applyFilter(_ name: String, _ v: JinjaValue, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)], _ scope: JinjaScope, line: Int) throws(PunaError) -> JinjaValue {
        try charge(v, line: line)
        for a in args { try charge(a, line: line) }
        func str(_ i: Int, _ key: String, _ dflt: String) -> String {
            guard let a = arg(args, kwargs, i, key) else { return dflt }
            return a.pythonStr
        }
        func flag(_ i: Int, _ key: String) -> Bool { arg(args, kwargs, i, key)?.truthy ?? false }
        func needString() throws(PunaError) -> String {
            switch v {
            case .string(let s): return s
            case .undefined: return ""
            default: return v.pythonStr
            }
        }
        switch name {
        case "safe": return .markup(v.pythonStr)
        case "e", "escape":
            if case .markup = v { return v }
            return .markup(htmlEscape(v.pythonStr))
        case "string": return .string(v.pythonStr)
        case "trim":
            let chars = arg(args, kwargs, 0, "chars")
            return .string(pyStrip(try needString(), chars: chars.flatMap { $0.isNone ? nil : $0.pythonStr }, left: true, right: true))
        case "upper": return .string(try needString().uppercased())
        case "lower": return .string(try needString().lowercased())
        case "capitalize": return .string(pyCapitalize(try needString()))
        case "title": return .string(pyTitle(try needString()))
        case "length", "count":
            switch v {
            case .string(let s): return .int(s.unicodeScalars.count)
            case .list(let l), .tuple(let l): return .int(l.count)
            case .dict(let d): return .int(d.count)
            case .undefined: return .int(0)
            default: throw error(line, "object of type '\(v.typeName)' has no len()")
            }
        case "wordcount": return .int(pySplit(try needString(), sep: nil, max: -1).count)
        case "first", "last":
            let items = try iterate(v, line: line)
            guard let x = name == "first" ? items.first : items.last else { return .undefined(hint: "no \(name) item, the sequence was empty") }
            return x
        case "reverse":
            if case .string(let s) = v { return .string(String(String.UnicodeScalarView(s.unicodeScalars.reversed()))) }
            return .iterator(try iterate(v, line: line).reversed())
        case "list": return .list(try iterate(v, line: line))
        case "join":
            var items = try iterate(v, line: line)
            if let attr = arg(args, kwargs, 1, "attribute") { items = try items.map { (x) throws(PunaError) in try attribute(x, attr, line: line) } }
            let sep = str(0, "d", "")
            var out = ""
            for (i, x) in items.enumerated() {
                if i > 0 { out += sep }
                out += x.pythonStr
                if out.utf8.count > limits.maxOutputBytes { throw error(line, "join: string exceeds \(limits.maxOutputBytes) bytes") }
            }
            return .string(out)
        case "replace":
            guard args.count >= 2 else { throw error(line, "replace needs two arguments") }
            let count = arg(args, kwargs, 2, "count")?.intValue ?? -1
            return try checkSize(pyReplace(try needString(), args[0].pythonStr, args[1].pythonStr, count: count), line: line)
        case "default", "d":
            let dflt = arg(args, kwargs, 0, "default_value") ?? .string("")
            if v.isUndefined || (flag(1, "boolean") && !v.truthy) { return dflt }
            return v
        case "items":
            switch v {
            case .dict(let d): return .iterator(d.entries.map { .tuple([$0.key, $0.value]) })
            case .undefined: return .iterator([])
            default: throw error(line, "items: '\(v.typeName)' is not a mapping")
            }
        case "dictsort":
            guard case .dict(let d) = v else { throw error(line, "dictsort: '\(v.typeName)' is not a mapping") }
            let byValue = str(1, "by", "key") == "value"
            let cs = flag(0, "case_sensitive")
            var pairs = d.entries.map { JinjaValue.tuple([$0.key, $0.value]) }
            try sortValues(&pairs, key: { (p) throws(PunaError) in
                guard case .tuple(let kv) = p else { return p }
                return cs ? kv[byValue ? 1 : 0] : lowerIfString(kv[byValue ? 1 : 0])
            }, line: line)
            if flag(2, "reverse") { pairs.reverse() }
            return .list(pairs)
        case "int":
            let dflt = arg(args, kwargs, 0, "default") ?? .int(0)
            switch v {
            case .int: return v
            case .bool(let b): return .int(b ? 1 : 0)
            case .float(let d): return d.isFinite && abs(d) < 9e18 ? .int(Int(d)) : dflt
            case .string(let s):
                let t = pyStrip(s, chars: nil, left: true, right: true)
                if let i = Int(t.replacingUnderscores()) { return .int(i) }
                if let d = jinjaParseDouble(t), d.isFinite, abs(d) < 9e18 { return .int(Int(d)) }
                return dflt
            default: return dflt
            }
        case "float":
            let dflt = arg(args, kwargs, 0, "default") ?? .float(0)
            switch v {
            case .float: return v
            case .int(let i): return .float(Double(i))
            case .bool(let b): return .float(b ? 1 : 0)
            case .string(let s): return jinjaParseDouble(pyStrip(s, chars: nil, left: true, right: true)).map { .float($0) } ?? dflt
            default: return dflt
            }
        case "abs":
            switch v {
            case .int(let i): return .int(abs(i))
            case .float(let d): return .float(abs(d))
            default: throw error(line, "bad operand type for abs(): '\(v.typeName)'")
            }
        case "round":
            guard let d = v.numeric else { throw error(line, "round needs a number") }
            let precision = arg(args, kwargs, 0, "precision")?.intValue ?? 0
            let method = str(1, "method", "common")
            var scale = 1.0
            for _ in 0..<max(0, min(precision, 15)) { scale *= 10 }
            // Python's round() (method "common") rounds half to even and keeps an int an int.
            if method == "common", case .int = v { return v }
            let x = d * scale
            let r: Double = method == "floor" ? x.rounded(.down) : method == "ceil" ? x.rounded(.up) : x.rounded(.toNearestOrEven)
            return .float(r / scale)
        case "sum":
            var items = try iterate(v, line: line)
            if let attr = arg(args, kwargs, 0, "attribute") { items = try items.map { (x) throws(PunaError) in try attribute(x, attr, line: line) } }
            var total = arg(args, kwargs, 1, "start") ?? .int(0)
            for x in items { total = try binary("+", total, x, line: line) }
            return total
        case "min", "max":
            var items = try iterate(v, line: line)
            guard !items.isEmpty else { return .undefined(hint: "no \(name) item, the sequence was empty") }
            let cs = flag(0, "case_sensitive")
            let attr = arg(args, kwargs, 1, "attribute")
            try sortValues(&items, key: { (x) throws(PunaError) in
                let k = attr == nil ? x : try self.attribute(x, attr!, line: line)
                return cs ? k : self.lowerIfString(k)
            }, line: line)
            return name == "min" ? items[0] : items[items.count - 1]
        case "sort":
            var items = try iterate(v, line: line)
            let cs = flag(1, "case_sensitive")
            let attr = arg(args, kwargs, 2, "attribute")
            try sortValues(&items, key: { (x) throws(PunaError) in
                let k = attr == nil ? x : try self.attribute(x, attr!, line: line)
                return cs ? k : self.lowerIfString(k)
            }, line: line)
            if flag(0, "reverse") { items.reverse() }
            return .list(items)
        case "unique":
            if case .list(let l) = v { try charge(l.count * l.count, line: line) }
            let cs = flag(0, "case_sensitive")
            let attr = arg(args, kwargs, 1, "attribute")
            var seen: [JinjaValue] = [], out: [JinjaValue] = []
            for x in try iterate(v, line: line) {
                var k = attr == nil ? x : try attribute(x, attr!, line: line)
                if !cs { k = lowerIfString(k) }
                if seen.contains(where: { equal($0, k) }) { continue }
                seen.append(k)
                out.append(x)
            }
            return .iterator(out)
        case "attr":
            guard let a = args.first else { throw error(line, "attr needs a name") }
            return try getAttr(v, a.pythonStr, line: line)
        case "map":
            let items = v.truthy ? try iterate(v, line: line) : []
            if let attr = kwarg(kwargs, "attribute") {
                let dflt = kwarg(kwargs, "default")
                return .iterator(try items.map { (x) throws(PunaError) in
                    let r = try attribute(x, attr, line: line)
                    if r.isUndefined, let dflt { return dflt }
                    return r
                })
            }
            guard case .string(let f) = args.first ?? .none else { throw error(line, "map needs a filter name or attribute=") }
            guard JinjaRenderer.filterNames.contains(f) else { throw error(line, "unsupported filter '\(f)' (in map)") }
            let rest = Array(args.dropFirst())
            return .iterator(try items.map { (x) throws(PunaError) in try applyFilter(f, x, rest, kwargs, scope, line: line) })
        case "select", "reject":
            let want = name == "select"
            var out: [JinjaValue] = []
            for x in v.truthy ? try iterate(v, line: line) : [] {
                let r: Bool
                if case .string(let t) = args.first ?? .none {
                    r = try applyTest(t, x, Array(args.dropFirst()), line: line)
                } else { r = x.truthy }
                if r == want { out.append(x) }
            }
            return .iterator(out)
        case "selectattr", "rejectattr":
            let want = name == "selectattr"
            guard let attr = args.first else { throw error(line, "\(name) needs an attribute name") }
            var out: [JinjaValue] = []
            for x in v.truthy ? try iterate(v, line: line) : [] {
                let a = try attribute(x, attr, line: line)
                let r: Bool
                if args.count > 1, case .string(let t) = args[1] {
                    r = try applyTest(t, a, Array(args.dropFirst(2)), line: line)
                } else { r = a.truthy }
                if r == want { out.append(x) }
            }
            return .iterator(out)
        case "indent":
            let width = arg(args, kwargs, 0, "width")
            let pad: String
            if case .string(let s) = width ?? .none { pad = s } else { pad = String(repeating: " ", count: max(0, min(width?.intValue ?? 4, 1000))) }
            let s = try needString() + "\n"
            let lines = pySplitLines(s)
            var out: String
            if flag(2, "blank") {
                out = lines.joined(separator: "\n" + pad)
            } else {
                out = lines.first ?? ""
                for l in lines.dropFirst() { out += "\n" + (l.isEmpty ? l : pad + l) }
            }
            if flag(1, "first") { out = pad + out }
            return try checkSize(out, line: line)
        case "center":
            let s = try needString()
            let width = arg(args, kwargs, 0, "width")?.intValue ?? 80
            let n = s.unicodeScalars.count
            if width <= n { return .string(s) }
            let left = (width - n) / 2 + ((width - n) % 2 & width % 2)
            return .string(String(repeating: " ", count: left) + s + String(repeating: " ", count: width - n - left))
        case "format":
            return .string(try percentFormat(try needString(), .tuple(args), line: line))
        case "batch":
            guard let n = args.first?.intValue, n > 0 else { throw error(line, "batch needs a positive size") }
            let items = try iterate(v, line: line)
            var out: [JinjaValue] = [], cur: [JinjaValue] = []
            for x in items {
                cur.append(x)
                if cur.count == n { out.append(.list(cur)); cur = [] }
            }
            if !cur.isEmpty {
                if let fill = arg(args, kwargs, 1, "fill_with") { while cur.count < n { cur.append(fill) } }
                out.append(.list(cur))
            }
            return .iterator(out)
        case "tojson":
            let indentArg = arg(args, kwargs, 1, "indent")
            var indent: String? = nil
            if let indentArg {
                switch indentArg {
                case .none: break
                case .string(let s): indent = s
                default: indent = String(repeating: " ", count: max(0, min(indentArg.intValue ?? 0, 64)))
                }
            }
            var itemSep = indent == nil ? ", " : ",", keySep = ": "
            if let sepArg = arg(args, kwargs, 2, "separators"), let seps = try? iterate(sepArg, line: line), seps.count == 2 {
                itemSep = seps[0].pythonStr; keySep = seps[1].pythonStr
            }
            let ensureASCII = arg(args, kwargs, 0, "ensure_ascii")?.truthy ?? false
            var out = ""
            try writeJSON(v, &out, indent: indent, level: 0, itemSep: itemSep, keySep: keySep,
                          sortKeys: arg(args, kwargs, 3, "sort_keys")?.truthy ?? false, ascii: ensureASCII, line: line, depth: 0)
            try charge(out.utf8.count, line: line)
            return .string(out)
        default:
            throw error(line, "unsupported filter '\(name)'")
        }
    }

    func lowerIfString(_ v: JinjaValue) -> JinjaValue {
        if case .string(let s) = v { return .string(s.lowercased()) }
        return v
    }

    /// A stable sort by `key` with Python's ordering (mixed types fail as in Python).
    func sortValues(_ items: inout [JinjaValue], key: (JinjaValue) throws(PunaError) -> JinjaValue, line: Int) throws(PunaError) {
        try charge(items.count * items.count, line: line)  // insertion sort: quadratic at worst
        var keyed: [(JinjaValue, JinjaValue)] = []
        for x in items { keyed.append((try key(x), x)) }
        // Insertion sort: stable, and lets comparison errors propagate; template lists are small.
        var i = 1
        while i < keyed.count {
            var j = i
            while j > 0, try compare(keyed[j].0, keyed[j - 1].0, line: line, op: "<") < 0 {
                keyed.swapAt(j, j - 1)
                j -= 1
            }
            i += 1
        }
        items = keyed.map { $0.1 }
    }

    /// jinja2's attribute lookup for filters: "a.b" paths, integer parts as indices.
    func attribute(_ v: JinjaValue, _ attr: JinjaValue, line: Int) throws(PunaError) -> JinjaValue {
        if case .int = attr { return try getItem(v, attr, line: line) }
        var cur = v
        for part in attr.pythonStr.split(separator: ".") {
            if let i = Int(String(part)) { cur = try getItem(cur, .int(i), line: line) }
            else {
                if cur.isUndefined { return cur }
                cur = try getItem(cur, .string(String(part)), line: line)
            }
        }
        return cur
    }

    // MARK: methods

    func callMethod(_ obj: JinjaValue, _ name: String, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)], line: Int) throws(PunaError) -> JinjaValue {
        try charge(obj, line: line)
        for a in args { try charge(a, line: line) }
        switch obj {
        case .string(let s):
            func sArg(_ i: Int, _ key: String) -> String? {
                guard let a = arg(args, kwargs, i, key), !a.isNone else { return nil }
                return a.pythonStr
            }
            switch name {
            case "strip": return .string(pyStrip(s, chars: sArg(0, "chars"), left: true, right: true))
            case "lstrip": return .string(pyStrip(s, chars: sArg(0, "chars"), left: true, right: false))
            case "rstrip": return .string(pyStrip(s, chars: sArg(0, "chars"), left: false, right: true))
            case "upper": return .string(s.uppercased())
            case "lower": return .string(s.lowercased())
            case "title": return .string(pyTitle(s))
            case "capitalize": return .string(pyCapitalize(s))
            case "split", "rsplit":
                let sep = sArg(0, "sep")
                if sep == "" { throw error(line, "split: empty separator") }
                let maxSplit = arg(args, kwargs, 1, "maxsplit")?.intValue ?? -1
                if name == "rsplit" && maxSplit >= 0 {
                    let parts = pySplit(String(String.UnicodeScalarView(s.unicodeScalars.reversed())),
                                        sep: sep.map { String(String.UnicodeScalarView($0.unicodeScalars.reversed())) }, max: maxSplit)
                    return .list(parts.reversed().map { .string(String(String.UnicodeScalarView($0.unicodeScalars.reversed()))) })
                }
                return .list(pySplit(s, sep: sep, max: maxSplit).map { .string($0) })
            case "splitlines": return .list(pySplitLines(s).map { .string($0) })
            case "startswith", "endswith":
                guard let a = args.first else { throw error(line, "\(name) needs an argument") }
                var candidates: [String] = []
                switch a {
                case .string(let p): candidates = [p]
                case .tuple(let l):
                    for x in l {
                        guard case .string(let p) = x else { throw error(line, "\(name) takes strings") }
                        candidates.append(p)
                    }
                default: throw error(line, "\(name) first arg must be str or a tuple of str, not \(a.typeName)")
                }
                for p in candidates where name == "startswith" ? s.utf8.starts(with: p.utf8) : s.utf8.reversed().starts(with: p.utf8.reversed()) { return .bool(true) }
                return .bool(false)
            case "replace":
                guard args.count >= 2 else { throw error(line, "replace needs two arguments") }
                return try checkSize(pyReplace(s, args[0].pythonStr, args[1].pythonStr, count: args.count > 2 ? (args[2].intValue ?? -1) : -1), line: line)
            case "find", "rfind", "index", "rindex", "count":
                guard case .string(let sub) = args.first ?? .none else { throw error(line, "\(name) needs a string") }
                let u = Array(s.unicodeScalars), n = Array(sub.unicodeScalars)
                var hits: [Int] = []
                var i = 0
                while i + n.count <= u.count {
                    if Array(u[i..<(i + n.count)]) == n { hits.append(i); if name == "count" { i += max(n.count, 1); continue } }
                    i += 1
                }
                if name == "count" { return .int(hits.count) }
                let r = (name == "find" || name == "index") ? hits.first : hits.last
                if r == nil && (name == "index" || name == "rindex") { throw error(line, "substring not found") }
                return .int(r ?? -1)
            case "join":
                var out = ""
                for (i, x) in try iterate(args.first ?? .list([]), line: line).enumerated() {
                    guard case .string(let p) = x else { throw error(line, "join: sequence item \(i): expected str, \(x.typeName) found") }
                    if i > 0 { out += s }
                    out += p
                }
                return try checkSize(out, line: line)
            case "format": return try checkSize(try pyFormat(s, args, kwargs, line: line), line: line)
            case "isdigit", "isnumeric", "isdecimal":
                return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.value >= 0x30 && $0.value <= 0x39 })
            case "isalpha":
                return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.isAlphabetic })
            case "isspace": return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { isPySpace($0) })
            case "islower": return .bool(s.lowercased() == s && s.uppercased() != s)
            case "isupper": return .bool(s.uppercased() == s && s.lowercased() != s)
            default: break
            }
        case .dict(let d):
            switch name {
            case "get":
                guard let k = args.first else { throw error(line, "get needs a key") }
                return d[value: k] ?? (args.count > 1 ? args[1] : .none)
            case "items": return .list(d.entries.map { .tuple([$0.key, $0.value]) })
            case "keys": return .list(d.keys)
            case "values": return .list(d.entries.map { $0.value })
            case "update", "pop", "popitem", "setdefault", "clear":
                throw error(line, "the sandbox does not allow dict.\(name)() (templates cannot modify their inputs)")
            default:
                if let v = d[name] { return try call(v, args, kwargs, line: line, what: name) }
            }
        case .list(let l), .tuple(let l):
            switch name {
            case "index":
                guard let x = args.first else { throw error(line, "index needs an argument") }
                for (i, y) in l.enumerated() where equal(x, y) { return .int(i) }
                throw error(line, "\(x.pythonRepr) is not in list")
            case "count":
                guard let x = args.first else { throw error(line, "count needs an argument") }
                return .int(l.filter { equal($0, x) }.count)
            case "append", "pop", "insert", "extend", "remove", "sort", "reverse", "clear":
                throw error(line, "the sandbox does not allow list.\(name)() (templates cannot modify lists)")
            default: break
            }
        default: break
        }
        throw error(line, "unsupported method '\(obj.typeName).\(name)()'")
    }

    /// `str.format`: `{}`, `{0}`, `{name}`, `{{`/`}}`; format specs are not supported.
    func pyFormat(_ s: String, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)], line: Int) throws(PunaError) -> String {
        var out = ""
        var auto = 0
        let u = Array(s.unicodeScalars)
        var i = 0
        while i < u.count {
            let c = u[i]
            if c == "{" {
                if i + 1 < u.count && u[i + 1] == "{" { out += "{"; i += 2; continue }
                var j = i + 1
                var field = ""
                while j < u.count && u[j] != "}" { field.unicodeScalars.append(u[j]); j += 1 }
                guard j < u.count else { throw error(line, "format: single '{' encountered") }
                if field.utf8.contains(UInt8(ascii: ":")) || field.utf8.contains(UInt8(ascii: "!")) {
                    throw error(line, "unsupported construct: str.format spec '{\(field)}'")
                }
                let v: JinjaValue
                if field.isEmpty {
                    guard auto < args.count else { throw error(line, "format: index \(auto) out of range") }
                    v = args[auto]; auto += 1
                } else if let n = Int(field) {
                    guard n < args.count else { throw error(line, "format: index \(n) out of range") }
                    v = args[n]
                } else {
                    guard let kv = kwarg(kwargs, field) else { throw error(line, "format: no argument '\(field)'") }
                    v = kv
                }
                out += v.pythonStr
                i = j + 1
            } else if c == "}" {
                guard i + 1 < u.count && u[i + 1] == "}" else { throw error(line, "format: single '}' encountered") }
                out += "}"; i += 2
            } else {
                out.unicodeScalars.append(c); i += 1
            }
        }
        return out
    }

    // MARK: tojson (HF: json.dumps with ensure_ascii=False)

    func writeJSON(_ v: JinjaValue, _ out: inout String, indent: String?, level: Int, itemSep: String, keySep: String,
                   sortKeys: Bool, ascii: Bool, line: Int, depth: Int) throws(PunaError) {
        if depth > 100 { throw error(line, "tojson: nesting too deep") }
        if out.utf8.count > limits.maxOutputBytes { throw error(line, "tojson: output exceeds \(limits.maxOutputBytes) bytes") }
        func newline(_ l: Int) {
            guard let indent else { return }
            out += "\n"
            for _ in 0..<l { out += indent }
        }
        switch v {
        case .none: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .float(let d):
            if d.isNaN { out += "NaN" } else if d.isInfinite { out += d < 0 ? "-Infinity" : "Infinity" } else { out += pythonFloatRepr(d) }
        case .string(let s): jsonString(s, &out, ascii: ascii)
        case .list(let l), .tuple(let l):
            if l.isEmpty { out += "[]"; return }
            out += "["
            for (i, x) in l.enumerated() {
                if i > 0 { out += itemSep }
                newline(level + 1)
                try writeJSON(x, &out, indent: indent, level: level + 1, itemSep: itemSep, keySep: keySep, sortKeys: sortKeys, ascii: ascii, line: line, depth: depth + 1)
            }
            newline(level)
            out += "]"
        case .dict(let d):
            if d.count == 0 { out += "{}"; return }
            var entries = d.entries
            if sortKeys {
                var i = 1
                while i < entries.count {
                    var j = i
                    while j > 0, try compare(entries[j].key, entries[j - 1].key, line: line, op: "<") < 0 { entries.swapAt(j, j - 1); j -= 1 }
                    i += 1
                }
            }
            out += "{"
            for (i, e) in entries.enumerated() {
                if i > 0 { out += itemSep }
                newline(level + 1)
                switch e.key {
                case .string(let k): jsonString(k, &out, ascii: ascii)
                case .int(let k): jsonString(String(k), &out, ascii: ascii)
                case .float(let k): jsonString(pythonFloatRepr(k), &out, ascii: ascii)
                case .bool(let k): jsonString(k ? "true" : "false", &out, ascii: ascii)
                case .none: jsonString("null", &out, ascii: ascii)
                default: throw error(line, "tojson: keys must be str, int, float, bool or None")
                }
                out += keySep
                try writeJSON(e.value, &out, indent: indent, level: level + 1, itemSep: itemSep, keySep: keySep, sortKeys: sortKeys, ascii: ascii, line: line, depth: depth + 1)
            }
            newline(level)
            out += "}"
        default:
            throw error(line, "tojson: object of type '\(v.typeName)' is not JSON serializable")
        }
    }

    func jsonString(_ s: String, _ out: inout String, ascii: Bool) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if u.value < 0x20 || (ascii && u.value > 0x7E) {
                    if u.value > 0xFFFF {
                        let v = u.value - 0x10000
                        out += "\\u" + hex4(0xD800 + (v >> 10)) + "\\u" + hex4(0xDC00 + (v & 0x3FF))
                    } else {
                        out += "\\u" + hex4(u.value)
                    }
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out += "\""
    }

    func hex4(_ v: UInt32) -> String { hex2(v >> 8) + hex2(v & 0xFF) }
}

// MARK: Python string helpers

func isPySpace(_ u: Unicode.Scalar) -> Bool {
    switch u.value {
    case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000: return true
    default: return false
    }
}

func pyStrip(_ s: String, chars: String?, left: Bool, right: Bool) -> String {
    let u = Array(s.unicodeScalars)
    let set = chars.map { Array($0.unicodeScalars) }
    func strip(_ c: Unicode.Scalar) -> Bool { set.map { $0.contains(c) } ?? isPySpace(c) }
    var a = 0, b = u.count
    if left { while a < b && strip(u[a]) { a += 1 } }
    if right { while b > a && strip(u[b - 1]) { b -= 1 } }
    var out = String.UnicodeScalarView()
    out.append(contentsOf: u[a..<b])
    return String(out)
}

/// Python's `str.split(sep, maxsplit)`; `sep == nil` splits on runs of whitespace.
func pySplit(_ s: String, sep: String?, max: Int) -> [String] {
    let u = Array(s.unicodeScalars)
    var out: [String] = []
    if let sep {
        let n = Array(sep.unicodeScalars)
        var cur = String.UnicodeScalarView()
        var i = 0
        while i < u.count {
            if (max < 0 || out.count < max) && i + n.count <= u.count && Array(u[i..<(i + n.count)]) == n {
                out.append(String(cur)); cur = String.UnicodeScalarView(); i += n.count
            } else {
                cur.append(u[i]); i += 1
            }
        }
        out.append(String(cur))
        return out
    }
    var i = 0
    while i < u.count {
        while i < u.count && isPySpace(u[i]) { i += 1 }
        if i >= u.count { break }
        if max >= 0 && out.count >= max {
            var rest = String.UnicodeScalarView()
            var end = u.count
            while end > i && isPySpace(u[end - 1]) { end -= 1 }
            rest.append(contentsOf: u[i..<end])
            out.append(String(rest))
            break
        }
        var cur = String.UnicodeScalarView()
        while i < u.count && !isPySpace(u[i]) { cur.append(u[i]); i += 1 }
        out.append(String(cur))
    }
    return out
}

/// Python's `str.splitlines()` (line ends dropped).
func pySplitLines(_ s: String) -> [String] {
    let u = Array(s.unicodeScalars)
    var out: [String] = []
    var cur = String.UnicodeScalarView()
    var i = 0
    while i < u.count {
        let c = u[i]
        switch c.value {
        case 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029:
            out.append(String(cur)); cur = String.UnicodeScalarView()
            if c.value == 0x0D && i + 1 < u.count && u[i + 1].value == 0x0A { i += 1 }
        default: cur.append(c)
        }
        i += 1
    }
    if !cur.isEmpty { out.append(String(cur)) }
    return out
}

func pyReplace(_ s: String, _ old: String, _ new: String, count: Int) -> String {
    if old.isEmpty {
        var out = ""
        var n = 0
        for u in s.unicodeScalars {
            if count < 0 || n < count { out += new; n += 1 }
            out.unicodeScalars.append(u)
        }
        if count < 0 || n < count { out += new }
        return out
    }
    let h = Array(s.utf8), o = Array(old.utf8)
    var out: [UInt8] = []
    var i = 0, n = 0
    while i < h.count {
        if (count < 0 || n < count) && i + o.count <= h.count && h[i] == o[0] && Array(h[i..<(i + o.count)]) == o {
            out.append(contentsOf: new.utf8); i += o.count; n += 1
        } else {
            out.append(h[i]); i += 1
        }
    }
    return String(decoding: out, as: UTF8.self)
}

func pyCapitalize(_ s: String) -> String {
    guard let f = s.unicodeScalars.first else { return s }
    var rest = String.UnicodeScalarView()
    rest.append(contentsOf: s.unicodeScalars.dropFirst())
    return String(Character(f)).uppercased() + String(rest).lowercased()
}

/// jinja2's `title`: each word (split at runs of whitespace, '-', '(', '{', '[', '<') capitalised.
func pyTitle(_ s: String) -> String {
    var out = ""
    var word = String.UnicodeScalarView()
    func flush() {
        if !word.isEmpty { out += pyCapitalize(String(word)); word = String.UnicodeScalarView() }
    }
    for u in s.unicodeScalars {
        if isPySpace(u) || u == "-" || u == "(" || u == "{" || u == "[" || u == "<" {
            flush()
            out.unicodeScalars.append(u)
        } else {
            word.append(u)
        }
    }
    flush()
    return out
}

extension String {
    func replacingUnderscores() -> String { pyReplace(self, "_", "", count: -1) }
}

/// markupsafe's escape: & < > " ' as HTML entities.
func htmlEscape(_ s: String) -> String {
    var out = ""
    for u in s.unicodeScalars {
        switch u {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&#34;"
        case "'": out += "&#39;"
        default: out.unicodeScalars.append(u)
        }
    }
    return out
}
