// Text helpers shared by the text tools and the protocol parser: converting between character
// tokens and std::string, and building [ERR] answers.
#pragma once
#include <string>

#include "tools/tool.h"

namespace ssm_tools {

// The characters of `tokens`; false if any token is not a character token (a malformed call).
bool tokens_to_text(const Tokens& tokens, std::string* text);

// Tokens of `text`; characters without a token become '?' (tool answers must stay in the vocabulary).
Tokens text_to_tokens(const std::string& text);

// "[ERR]<message>": the answer of a tool to a command it cannot run.
Tokens error_answer(const std::string& message);

// First space-separated word of `text` ("find" in "find v630").
std::string first_word(const std::string& text);

// Whether a text call's tokens start with the word `command` (followed by a space or nothing).
bool is_text_command(const Tokens& command, const std::string& word);

}  // namespace ssm_tools
