#include "tools/text.h"

namespace ssm_tools {

bool tokens_to_text(const Tokens& tokens, std::string* text) {
  text->clear();
  text->reserve(tokens.size());
  for (Token t : tokens) {
    if (!tok::is_char(t)) return false;
    text->push_back(tok::to_char(t));
  }
  return true;
}

Tokens text_to_tokens(const std::string& text) {
  Tokens out;
  out.reserve(text.size());
  for (char c : text) {
    Token t = tok::from_char(c);
    out.push_back(t < 0 ? tok::from_char('?') : t);
  }
  return out;
}

Tokens error_answer(const std::string& message) {
  Tokens out{tok::ERR};
  Tokens text = text_to_tokens(message);
  out.insert(out.end(), text.begin(), text.end());
  return out;
}

std::string first_word(const std::string& text) { return text.substr(0, text.find(' ')); }

bool is_text_command(const Tokens& command, const std::string& word) {
  if (command.size() < word.size()) return false;
  for (size_t i = 0; i < word.size(); ++i)
    if (command[i] != tok::from_char(word[i])) return false;
  return command.size() == word.size() || command[word.size()] == tok::from_char(' ');
}

}  // namespace ssm_tools
