/// The instruction and chat formats that LLaMA-family fine-tunes (and their LoRA adapters) were
/// trained on. A model answers best when its prompt is laid out exactly as in its training data,
/// so the texts below are the projects' own, character for character.
public enum PromptTemplate: Equatable, CaseIterable {
    /// The prompt as given, for base models and completion.
    case raw
    /// Stanford Alpaca, as used by Alpaca-LoRA (tloen/alpaca-lora, templates/alpaca.json).
    /// Stanford's own train.py (tatsu-lab/stanford_alpaca) ends at "### Response:" without the
    /// final newline; Alpaca-LoRA adds it, and Alpaca-style LoRA adapters were trained that way.
    case alpaca
    /// Guanaco (QLoRA, artidoro/qlora): "### Human: … ### Assistant:", an optional system line first.
    case guanaco
    /// Vicuna v1.1 (FastChat conv_vicuna_v1_1): system, then " USER: … ASSISTANT:"; replies end
    /// with the EOS token (FastChat's sep2 "</s>").
    case vicuna

    public static let names = ["raw", "alpaca", "guanaco", "vicuna"]

    /// Look a template up by name, case-insensitive.
    public init?(name: String) {
        switch name.lowercased() {
        case "raw", "none": self = .raw
        case "alpaca": self = .alpaca
        case "guanaco": self = .guanaco
        case "vicuna", "vicuna-v1.1", "vicuna_v1.1": self = .vicuna
        default: return nil
        }
    }

    public var name: String {
        switch self {
        case .raw: return "raw"
        case .alpaca: return "alpaca"
        case .guanaco: return "guanaco"
        case .vicuna: return "vicuna"
        }
    }

    // Stanford Alpaca's two preambles (with and without an input section).
    static let alpacaPreambleWithInput = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request."
    static let alpacaPreamble = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    /// FastChat's default system message for Vicuna v1.1.
    public static let vicunaSystem = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions."

    /// The full prompt for one request. `input` is Alpaca's optional context section (an empty
    /// input counts as none, as in Stanford's data preparation); the chat formats have no such
    /// section, so there it follows the prompt on a new line. `system` replaces the template's
    /// own preamble (Alpaca's first paragraph, Vicuna's system message) or, for Guanaco and raw,
    /// goes first on its own line.
    public func render(prompt: String, input: String? = nil, system: String? = nil) -> String {
        let input = (input?.isEmpty ?? true) ? nil : input
        switch self {
        case .raw:
            var text = system.map { $0 + "\n" } ?? ""
            text += prompt
            if let input { text += "\n" + input }
            return text
        case .alpaca:
            let preamble = system ?? (input == nil ? PromptTemplate.alpacaPreamble : PromptTemplate.alpacaPreambleWithInput)
            var text = preamble + "\n\n### Instruction:\n" + prompt
            if let input { text += "\n\n### Input:\n" + input }
            return text + "\n\n### Response:\n"
        case .guanaco:
            let user = input.map { prompt + "\n" + $0 } ?? prompt
            return (system.map { $0 + "\n" } ?? "") + "### Human: " + user + " ### Assistant:"
        case .vicuna:
            let user = input.map { prompt + "\n" + $0 } ?? prompt
            return (system ?? PromptTemplate.vicunaSystem) + " USER: " + user + " ASSISTANT:"
        }
    }

    /// Text to evaluate for one more user turn of a chat. For the first turn it is the full prompt
    /// (with the system text); later turns assume the KV cache already holds the earlier turns and
    /// the assistant's reply, the reply's stop string cut off. For templates whose replies end
    /// with EOS (`endsReplyWithEOS`), the caller evaluates the EOS token before this text.
    public func renderTurn(user: String, isFirst: Bool, system: String?) -> String {
        if isFirst { return render(prompt: user, system: system) }
        switch self {
        case .raw: return user
        case .alpaca: return "\n\n### Instruction:\n" + user + "\n\n### Response:\n"
        case .guanaco: return " ### Human: " + user + " ### Assistant:"
        case .vicuna: return "USER: " + user + " ASSISTANT:"
        }
    }

    /// Whether a finished reply is followed by the EOS token in the training data (Vicuna v1.1's
    /// "</s>" separator). A chat loop feeds EOS after a reply that stopped on a stop string.
    public var endsReplyWithEOS: Bool { self == .vicuna }

    /// Text that marks the model starting the user's next turn: generation stops there and the
    /// stop string is cut from the reply.
    public var stopStrings: [String] {
        switch self {
        case .raw: return []
        case .alpaca: return ["### Instruction:"]
        case .guanaco: return ["### Human:"]
        case .vicuna: return ["USER:"]
        }
    }
}
