/// The syntax tree of a template and its parser (jinja2's grammar and operator precedence).
indirect enum JinjaExpr {
    case literal(JinjaValue)
    case name(String, line: Int)
    case list([JinjaExpr])
    case tuple([JinjaExpr])
    case dict([(JinjaExpr, JinjaExpr)], line: Int)
    case attr(JinjaExpr, String, line: Int)
    case item(JinjaExpr, JinjaExpr, line: Int)
    case slice(JinjaExpr, JinjaExpr?, JinjaExpr?, JinjaExpr?, line: Int)
    case call(JinjaExpr, [JinjaExpr], [(String, JinjaExpr)], line: Int)
    case filter(JinjaExpr, String, [JinjaExpr], [(String, JinjaExpr)], line: Int)
    case test(JinjaExpr, String, [JinjaExpr], negated: Bool, line: Int)
    case unary(String, JinjaExpr, line: Int)
    case binary(String, JinjaExpr, JinjaExpr, line: Int)
    case and(JinjaExpr, JinjaExpr)
    case or(JinjaExpr, JinjaExpr)
    case conditional(then: JinjaExpr, cond: JinjaExpr, otherwise: JinjaExpr?)
}

enum JinjaTarget {
    case names([String])
    case attribute(String, String)
}

struct JinjaFilterCall {
    let name: String
    let args: [JinjaExpr]
    let kwargs: [(String, JinjaExpr)]
    let line: Int
}

indirect enum JinjaNode {
    case text(String)
    case output(JinjaExpr, line: Int)
    case ifChain([(JinjaExpr, [JinjaNode])], otherwise: [JinjaNode])
    case forLoop(targets: [String], iterable: JinjaExpr, condition: JinjaExpr?, body: [JinjaNode], otherwise: [JinjaNode], line: Int)
    case set(JinjaTarget, JinjaExpr, line: Int)
    case setBlock(JinjaTarget, [JinjaNode], filters: [JinjaFilterCall], line: Int)
    case macro(name: String, params: [(name: String, defaultValue: JinjaExpr?)], body: [JinjaNode])
    case callBlock(JinjaExpr, params: [(name: String, defaultValue: JinjaExpr?)], body: [JinjaNode], line: Int)
    case filterBlock([JinjaFilterCall], [JinjaNode])
    case breakLoop(line: Int)
    case continueLoop(line: Int)
    case generation([JinjaNode])
}

struct JinjaParser {
    let tokens: [JinjaToken]
    var index = 0
    var depth = 0
    let maxDepth: Int
    let maxChain: Int

    init(tokens: [JinjaToken], maxDepth: Int, maxChain: Int = 1_000) {
        self.tokens = tokens
        self.maxDepth = maxDepth
        self.maxChain = maxChain
    }

    /// Chains of operators, filters and postfixes build left-deep trees that evaluation walks
    /// recursively: bound their length as nesting is bounded.
    func checkChain(_ n: inout Int) throws(PunaError) {
        n += 1
        if n > maxChain { throw error("an expression chains more than \(maxChain) operators") }
    }

    var current: JinjaToken { tokens[index] }
    var line: Int { tokens[index].line }

    func error(_ message: String, line: Int? = nil) -> PunaError {
        PunaError("chat template line \(line ?? self.line): \(message)")
    }

    mutating func advance() { if index < tokens.count - 1 { index += 1 } }

    func isOp(_ s: String) -> Bool { if case .op(let o) = current.kind { return o == s } else { return false } }
    func isName(_ s: String) -> Bool { if case .name(let n) = current.kind { return n == s } else { return false } }
    func peekName(_ offset: Int) -> String? {
        guard index + offset < tokens.count, case .name(let n) = tokens[index + offset].kind else { return nil }
        return n
    }

    mutating func skipOp(_ s: String) -> Bool {
        if isOp(s) { advance(); return true }
        return false
    }
    mutating func skipName(_ s: String) -> Bool {
        if isName(s) { advance(); return true }
        return false
    }
    mutating func expectOp(_ s: String) throws(PunaError) {
        guard skipOp(s) else { throw error("expected '\(s)', found \(describe(current.kind))") }
    }
    mutating func expectName() throws(PunaError) -> String {
        guard case .name(let n) = current.kind else { throw error("expected a name, found \(describe(current.kind))") }
        advance()
        return n
    }
    mutating func expectBlockEnd() throws(PunaError) {
        guard case .blockEnd = current.kind else { throw error("expected the end of the block tag '%}', found \(describe(current.kind))") }
        advance()
    }

    func describe(_ k: JinjaTokenKind) -> String {
        switch k {
        case .text: return "template text"
        case .blockBegin: return "'{%'"
        case .blockEnd: return "'%}'"
        case .varBegin: return "'{{'"
        case .varEnd: return "'}}'"
        case .name(let n): return "'\(n)'"
        case .string: return "a string"
        case .int, .float: return "a number"
        case .op(let o): return "'\(o)'"
        case .end: return "the end of the template"
        }
    }

    mutating func enter() throws(PunaError) {
        depth += 1
        if depth > maxDepth { throw error("nesting deeper than \(maxDepth) levels") }
    }

    // MARK: statements

    mutating func parseTemplate() throws(PunaError) -> [JinjaNode] {
        let (body, end) = try parseBody(until: [])
        if let end { throw error("unexpected '{% \(end) %}' without its opening tag") }
        return body
    }

    /// Nodes until one of `until` block keywords (returned, tag positioned just after the keyword).
    mutating func parseBody(until: [String], opener: String? = nil, openLine: Int = 0) throws(PunaError) -> ([JinjaNode], String?) {
        try enter()
        defer { depth -= 1 }
        var nodes: [JinjaNode] = []
        while true {
            switch current.kind {
            case .end:
                if let opener { throw error("'{% \(opener) %}' opened on line \(openLine) is never closed (expected \(until.map { "'{% \($0) %}'" }.joined(separator: " or ")))") }
                return (nodes, nil)
            case .text(let t):
                nodes.append(.text(t))
                advance()
            case .varBegin:
                let l = line
                advance()
                let e = try parseExpression()
                guard case .varEnd = current.kind else { throw error("expected '}}', found \(describe(current.kind))") }
                advance()
                nodes.append(.output(e, line: l))
            case .blockBegin:
                advance()
                guard case .name(let keyword) = current.kind else { throw error("expected a tag name after '{%', found \(describe(current.kind))") }
                if until.contains(keyword) {
                    advance()
                    return (nodes, keyword)
                }
                if keyword.hasPrefix("end") || keyword == "elif" || keyword == "else" {
                    if opener == nil { throw error("unexpected '{% \(keyword) %}'") }
                    throw error("unexpected '{% \(keyword) %}' inside '{% \(opener!) %}' opened on line \(openLine)")
                }
                nodes.append(try parseStatement(keyword))
            default:
                throw error("unexpected \(describe(current.kind))")
            }
        }
    }

    mutating func parseStatement(_ keyword: String) throws(PunaError) -> JinjaNode {
        let l = line
        advance()
        switch keyword {
        case "if":
            var branches: [(JinjaExpr, [JinjaNode])] = []
            var cond = try parseExpression()
            try expectBlockEnd()
            while true {
                let (body, end) = try parseBody(until: ["elif", "else", "endif"], opener: "if", openLine: l)
                branches.append((cond, body))
                if end == "elif" {
                    cond = try parseExpression()
                    try expectBlockEnd()
                    continue
                }
                if end == "else" {
                    try expectBlockEnd()
                    let (other, _) = try parseBody(until: ["endif"], opener: "if", openLine: l)
                    try expectBlockEnd()
                    return .ifChain(branches, otherwise: other)
                }
                try expectBlockEnd()
                return .ifChain(branches, otherwise: [])
            }
        case "for":
            var targets = [try expectName()]
            while skipOp(",") { targets.append(try expectName()) }
            guard skipName("in") else { throw error("expected 'in' in a for loop") }
            let iterable = try parseCondExpr(allowIf: false)
            var condition: JinjaExpr? = nil
            if skipName("if") { condition = try parseExpression() }
            if isName("recursive") { throw error("unsupported construct 'recursive' for loops") }
            try expectBlockEnd()
            let (body, end) = try parseBody(until: ["else", "endfor"], opener: "for", openLine: l)
            var other: [JinjaNode] = []
            if end == "else" {
                try expectBlockEnd()
                (other, _) = try parseBody(until: ["endfor"], opener: "for", openLine: l)
            }
            try expectBlockEnd()
            return .forLoop(targets: targets, iterable: iterable, condition: condition, body: body, otherwise: other, line: l)
        case "set":
            let first = try expectName()
            var target = JinjaTarget.names([first])
            if skipOp(".") {
                target = .attribute(first, try expectName())
            } else if isOp(",") {
                var names = [first]
                while skipOp(",") { names.append(try expectName()) }
                target = .names(names)
            }
            if skipOp("=") {
                let value = try parseTuple()
                try expectBlockEnd()
                return .set(target, value, line: l)
            }
            let filters = try parseFilterChain()
            try expectBlockEnd()
            let (body, _) = try parseBody(until: ["endset"], opener: "set", openLine: l)
            try expectBlockEnd()
            return .setBlock(target, body, filters: filters, line: l)
        case "macro":
            let name = try expectName()
            let params = try parseParams()
            try expectBlockEnd()
            let (body, _) = try parseBody(until: ["endmacro"], opener: "macro", openLine: l)
            if case .name = current.kind { advance() }  // {% endmacro name %}
            try expectBlockEnd()
            return .macro(name: name, params: params, body: body)
        case "call":
            var params: [(name: String, defaultValue: JinjaExpr?)] = []
            if isOp("(") { params = try parseParams() }
            let call = try parseExpression()
            guard case .call = call else { throw error("'{% call %}' needs a macro call") }
            try expectBlockEnd()
            let (body, _) = try parseBody(until: ["endcall"], opener: "call", openLine: l)
            try expectBlockEnd()
            return .callBlock(call, params: params, body: body, line: l)
        case "filter":
            let filters = try parseFilterChain(first: true)
            try expectBlockEnd()
            let (body, _) = try parseBody(until: ["endfilter"], opener: "filter", openLine: l)
            try expectBlockEnd()
            return .filterBlock(filters, body)
        case "break", "continue":
            try expectBlockEnd()
            return keyword == "break" ? .breakLoop(line: l) : .continueLoop(line: l)
        case "generation":
            try expectBlockEnd()
            let (body, _) = try parseBody(until: ["endgeneration"], opener: "generation", openLine: l)
            try expectBlockEnd()
            return .generation(body)
        default:
            throw error("unsupported construct '{% \(keyword) %}'", line: l)
        }
    }

    mutating func parseParams() throws(PunaError) -> [(name: String, defaultValue: JinjaExpr?)] {
        try expectOp("(")
        var params: [(name: String, defaultValue: JinjaExpr?)] = []
        while !isOp(")") {
            if !params.isEmpty { try expectOp(",") }
            if isOp(")") { break }
            let n = try expectName()
            var d: JinjaExpr? = nil
            if skipOp("=") { d = try parseExpression() }
            params.append((n, d))
        }
        try expectOp(")")
        return params
    }

    /// `|f(args)|g` after `{% set x %}` or `{% filter %}`.
    mutating func parseFilterChain(first: Bool = false) throws(PunaError) -> [JinjaFilterCall] {
        var result: [JinjaFilterCall] = []
        var needPipe = !first
        while true {
            if needPipe { if !skipOp("|") { break } }
            needPipe = true
            let l = line
            var name = try expectName()
            while skipOp(".") { name += "." + (try expectName()) }
            var args: [JinjaExpr] = [], kwargs: [(String, JinjaExpr)] = []
            if isOp("(") { (args, kwargs) = try parseArgs() }
            result.append(JinjaFilterCall(name: name, args: args, kwargs: kwargs, line: l))
        }
        return result
    }

    // MARK: expressions

    mutating func parseTuple() throws(PunaError) -> JinjaExpr {
        let first = try parseExpression()
        guard isOp(",") else { return first }
        var items = [first]
        while skipOp(",") {
            if case .blockEnd = current.kind { break }
            items.append(try parseExpression())
        }
        return .tuple(items)
    }

    mutating func parseExpression() throws(PunaError) -> JinjaExpr { try parseCondExpr(allowIf: true) }

    mutating func parseCondExpr(allowIf: Bool) throws(PunaError) -> JinjaExpr {
        try enter()
        defer { depth -= 1 }
        var e = try parseOr()
        while allowIf && isName("if") {
            advance()
            let cond = try parseOr()
            var other: JinjaExpr? = nil
            if skipName("else") { other = try parseCondExpr(allowIf: true) }
            e = .conditional(then: e, cond: cond, otherwise: other)
        }
        return e
    }

    mutating func parseOr() throws(PunaError) -> JinjaExpr {
        var e = try parseAnd()
        var n = 0
        while skipName("or") { try checkChain(&n); e = .or(e, try parseAnd()) }
        return e
    }

    mutating func parseAnd() throws(PunaError) -> JinjaExpr {
        var e = try parseNot()
        var n = 0
        while skipName("and") { try checkChain(&n); e = .and(e, try parseNot()) }
        return e
    }

    mutating func parseNot() throws(PunaError) -> JinjaExpr {
        if isName("not") {
            let l = line
            advance()
            try enter()
            defer { depth -= 1 }
            return .unary("not", try parseNot(), line: l)
        }
        return try parseCompare()
    }

    mutating func parseCompare() throws(PunaError) -> JinjaExpr {
        var e = try parseMath1()
        var n = 0
        while true {
            try checkChain(&n)
            let l = line
            if case .op(let o) = current.kind, o == "==" || o == "!=" || o == "<" || o == ">" || o == "<=" || o == ">=" {
                advance()
                e = .binary(o, e, try parseMath1(), line: l)
            } else if isName("in") {
                advance()
                e = .binary("in", e, try parseMath1(), line: l)
            } else if isName("not") && peekName(1) == "in" {
                advance(); advance()
                e = .binary("not in", e, try parseMath1(), line: l)
            } else {
                return e
            }
        }
    }

    mutating func parseMath1() throws(PunaError) -> JinjaExpr {
        var e = try parseConcat()
        var n = 0
        while case .op(let o) = current.kind, o == "+" || o == "-" {
            try checkChain(&n)
            let l = line
            advance()
            e = .binary(o, e, try parseConcat(), line: l)
        }
        return e
    }

    mutating func parseConcat() throws(PunaError) -> JinjaExpr {
        var e = try parseMath2()
        var n = 0
        while isOp("~") {
            try checkChain(&n)
            let l = line
            advance()
            e = .binary("~", e, try parseMath2(), line: l)
        }
        return e
    }

    mutating func parseMath2() throws(PunaError) -> JinjaExpr {
        var e = try parsePow()
        var n = 0
        while case .op(let o) = current.kind, o == "*" || o == "/" || o == "//" || o == "%" {
            try checkChain(&n)
            let l = line
            advance()
            e = .binary(o, e, try parsePow(), line: l)
        }
        return e
    }

    mutating func parsePow() throws(PunaError) -> JinjaExpr {
        var e = try parseUnary(withFilter: true)
        var n = 0
        while isOp("**") {
            try checkChain(&n)
            let l = line
            advance()
            e = .binary("**", e, try parseUnary(withFilter: true), line: l)
        }
        return e
    }

    mutating func parseUnary(withFilter: Bool) throws(PunaError) -> JinjaExpr {
        try enter()
        defer { depth -= 1 }
        var e: JinjaExpr
        let l = line
        if isOp("-") {
            advance()
            e = .unary("-", try parseUnary(withFilter: false), line: l)
        } else if isOp("+") {
            advance()
            e = .unary("+", try parseUnary(withFilter: false), line: l)
        } else {
            e = try parsePrimary()
        }
        e = try parsePostfix(e)
        if withFilter { e = try parseFilterExpr(e) }
        return e
    }

    mutating func parsePrimary() throws(PunaError) -> JinjaExpr {
        let l = line
        switch current.kind {
        case .name(let n):
            advance()
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(n, line: l)
            }
        case .string(let s):
            advance()
            var text = s
            while case .string(let more) = current.kind { text += more; advance() }
            return .literal(.string(text))
        case .int(let i): advance(); return .literal(.int(i))
        case .float(let d): advance(); return .literal(.float(d))
        case .op("("):
            advance()
            if skipOp(")") { return .tuple([]) }
            let first = try parseExpression()
            if skipOp(")") { return first }
            var items = [first]
            while skipOp(",") {
                if isOp(")") { break }
                items.append(try parseExpression())
            }
            try expectOp(")")
            return .tuple(items)
        case .op("["):
            advance()
            var items: [JinjaExpr] = []
            while !isOp("]") {
                if !items.isEmpty { try expectOp(",") }
                if isOp("]") { break }
                items.append(try parseExpression())
            }
            try expectOp("]")
            return .list(items)
        case .op("{"):
            advance()
            var pairs: [(JinjaExpr, JinjaExpr)] = []
            while !isOp("}") {
                if !pairs.isEmpty { try expectOp(",") }
                if isOp("}") { break }
                let k = try parseExpression()
                try expectOp(":")
                pairs.append((k, try parseExpression()))
            }
            try expectOp("}")
            return .dict(pairs, line: l)
        default:
            throw error("unexpected \(describe(current.kind)) in an expression")
        }
    }

    mutating func parsePostfix(_ base: JinjaExpr) throws(PunaError) -> JinjaExpr {
        var e = base
        var n = 0
        while true {
            try checkChain(&n)
            let l = line
            if isOp(".") {
                advance()
                switch current.kind {
                case .name(let n): advance(); e = .attr(e, n, line: l)
                case .int(let i): advance(); e = .item(e, .literal(.int(i)), line: l)
                default: throw error("expected an attribute name after '.'")
                }
            } else if isOp("[") {
                advance()
                var parts: [JinjaExpr?] = [nil]
                var isSlice = false
                while !isOp("]") {
                    if skipOp(":") { isSlice = true; parts.append(nil); continue }
                    parts[parts.count - 1] = try parseExpression()
                }
                try expectOp("]")
                if isSlice {
                    guard parts.count <= 3 else { throw error("a slice takes at most three parts") }
                    while parts.count < 3 { parts.append(nil) }
                    e = .slice(e, parts[0], parts[1], parts[2], line: l)
                } else {
                    guard let idx = parts[0] else { throw error("empty subscript '[]'") }
                    e = .item(e, idx, line: l)
                }
            } else if isOp("(") {
                let (args, kwargs) = try parseArgs()
                e = .call(e, args, kwargs, line: l)
            } else {
                return e
            }
        }
    }

    mutating func parseFilterExpr(_ base: JinjaExpr) throws(PunaError) -> JinjaExpr {
        var e = base
        var n = 0
        while true {
            try checkChain(&n)
            let l = line
            if isOp("|") {
                advance()
                var name = try expectName()
                while skipOp(".") { name += "." + (try expectName()) }
                var args: [JinjaExpr] = [], kwargs: [(String, JinjaExpr)] = []
                if isOp("(") { (args, kwargs) = try parseArgs() }
                e = .filter(e, name, args, kwargs, line: l)
            } else if isName("is") {
                advance()
                let negated = skipName("not")
                var name = try expectName()
                // Tests named like keywords.
                if name == "none" || name == "true" || name == "false" { name = name.lowercased() }
                var args: [JinjaExpr] = []
                if isOp("(") {
                    let (a, _) = try parseArgs()
                    args = a
                } else {
                    switch current.kind {
                    case .name(let n) where !["else", "or", "and", "if", "is", "in", "not"].contains(n):
                        args = [try parseUnary(withFilter: false)]
                    case .string, .int, .float, .op("["), .op("{"), .op("("), .op("-"):
                        args = [try parseUnary(withFilter: false)]
                    default: break
                    }
                }
                e = .test(e, name, args, negated: negated, line: l)
            } else if isOp("(") {
                let (args, kwargs) = try parseArgs()
                e = .call(e, args, kwargs, line: l)
            } else {
                return e
            }
        }
    }

    mutating func parseArgs() throws(PunaError) -> ([JinjaExpr], [(String, JinjaExpr)]) {
        try expectOp("(")
        var args: [JinjaExpr] = [], kwargs: [(String, JinjaExpr)] = []
        var first = true
        while !isOp(")") {
            if !first { try expectOp(",") }
            first = false
            if isOp(")") { break }
            if isOp("*") || isOp("**") { throw error("unsupported construct '*args'/'**kwargs' in a call") }
            if case .name(let n) = current.kind, index + 1 < tokens.count, case .op("=") = tokens[index + 1].kind {
                advance(); advance()
                kwargs.append((n, try parseExpression()))
            } else {
                if !kwargs.isEmpty { throw error("positional argument after a keyword argument") }
                args.append(try parseExpression())
            }
        }
        try expectOp(")")
        return (args, kwargs)
    }
}
