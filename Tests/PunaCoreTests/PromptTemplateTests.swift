import PunaCore
import XCTest

/// The expected strings are the projects' templates filled in by hand: Alpaca-LoRA's
/// templates/alpaca.json, QLoRA's Guanaco prompt ("### Human: {} ### Assistant:" after an optional
/// system line) and FastChat's vicuna_v1.1 conversation (sep " ", sep2 "</s>").
final class PromptTemplateTests: XCTestCase {
    func testNames() {
        XCTAssertEqual(PromptTemplate.names, ["raw", "alpaca", "guanaco", "vicuna"])
        for name in PromptTemplate.names {
            XCTAssertEqual(PromptTemplate(name: name)?.name, name)
        }
        XCTAssertEqual(PromptTemplate(name: "Alpaca"), .alpaca)
        XCTAssertEqual(PromptTemplate(name: "VICUNA"), .vicuna)
        XCTAssertNil(PromptTemplate(name: "chatml"))
        XCTAssertEqual(PromptTemplate.allCases.map(\.name), PromptTemplate.names)
    }

    func testAlpaca() {
        XCTAssertEqual(PromptTemplate.alpaca.render(prompt: "Name three colors."),
                       "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nName three colors.\n\n### Response:\n")
        XCTAssertEqual(PromptTemplate.alpaca.render(prompt: "Translate to French.", input: "Good morning"),
                       "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:\n")
        XCTAssertEqual(PromptTemplate.alpaca.render(prompt: "Hi", input: ""),
                       PromptTemplate.alpaca.render(prompt: "Hi"), "an empty input is no input")
        XCTAssertEqual(PromptTemplate.alpaca.render(prompt: "Hi", system: "You are terse."),
                       "You are terse.\n\n### Instruction:\nHi\n\n### Response:\n")
        XCTAssertEqual(PromptTemplate.alpaca.stopStrings, ["### Instruction:"])
    }

    func testGuanaco() {
        XCTAssertEqual(PromptTemplate.guanaco.render(prompt: "What is a llama?"),
                       "### Human: What is a llama? ### Assistant:")
        XCTAssertEqual(PromptTemplate.guanaco.render(
            prompt: "What is a llama?",
            system: "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions."),
            "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.\n### Human: What is a llama? ### Assistant:")
        XCTAssertEqual(PromptTemplate.guanaco.render(prompt: "Summarise:", input: "text"),
                       "### Human: Summarise:\ntext ### Assistant:")
        XCTAssertEqual(PromptTemplate.guanaco.stopStrings, ["### Human:"])
    }

    func testVicuna() {
        XCTAssertEqual(PromptTemplate.vicuna.render(prompt: "Hello!"),
                       "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: Hello! ASSISTANT:")
        XCTAssertEqual(PromptTemplate.vicuna.render(prompt: "Hello!", system: "Be brief."),
                       "Be brief. USER: Hello! ASSISTANT:")
        XCTAssertEqual(PromptTemplate.vicuna.stopStrings, ["USER:"])
        XCTAssertTrue(PromptTemplate.vicuna.endsReplyWithEOS)
        XCTAssertFalse(PromptTemplate.guanaco.endsReplyWithEOS)
    }

    func testRaw() {
        XCTAssertEqual(PromptTemplate.raw.render(prompt: "Once upon a time"), "Once upon a time")
        XCTAssertEqual(PromptTemplate.raw.render(prompt: "Q", input: "I", system: "S"), "S\nQ\nI")
        XCTAssertEqual(PromptTemplate.raw.stopStrings, [])
    }

    /// A two-turn chat built from renderTurn pieces plus the model's replies must equal the
    /// training format of the whole conversation.
    func testMultiTurnMatchesWholeConversation() {
        // FastChat get_prompt for [USER u1, ASSISTANT a1, USER u2, ASSISTANT (open)]:
        // system + " " + "USER: u1 " + "ASSISTANT: a1</s>" + "USER: u2 " + "ASSISTANT:"
        let v = PromptTemplate.vicuna
        let vicunaChat = v.renderTurn(user: "Hi", isFirst: true, system: nil) + " Hello there." + "</s>"
            + v.renderTurn(user: "How are you?", isFirst: false, system: nil)
        XCTAssertEqual(vicunaChat, PromptTemplate.vicunaSystem + " USER: Hi ASSISTANT: Hello there.</s>USER: How are you? ASSISTANT:")

        let g = PromptTemplate.guanaco
        let guanacoChat = g.renderTurn(user: "Hi", isFirst: true, system: "Sys") + " Hello there."
            + g.renderTurn(user: "And you?", isFirst: false, system: "Sys")
        XCTAssertEqual(guanacoChat, "Sys\n### Human: Hi ### Assistant: Hello there. ### Human: And you? ### Assistant:")

        let a = PromptTemplate.alpaca
        let alpacaChat = a.renderTurn(user: "List two fruits.", isFirst: true, system: nil) + "Apple, pear."
            + a.renderTurn(user: "One more.", isFirst: false, system: nil)
        XCTAssertEqual(alpacaChat, "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nList two fruits.\n\n### Response:\nApple, pear.\n\n### Instruction:\nOne more.\n\n### Response:\n")

        XCTAssertEqual(PromptTemplate.raw.renderTurn(user: "more", isFirst: false, system: nil), "more")
        for t in PromptTemplate.allCases {
            XCTAssertEqual(t.renderTurn(user: "u", isFirst: true, system: "s"), t.render(prompt: "u", system: "s"))
        }
    }
}
