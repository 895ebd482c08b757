#include "tools/env.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace ssm_tools {
namespace {

// Episodes per chunk of a step: a step costs tens of ns per episode, so a chunk must be large
// enough to pay for waking a thread.
constexpr int64_t kStepGrain = 1024;

}  // namespace

Env::Env(const std::vector<ToolFactory>& tools, const EnvOptions& options)
    : max_len_(options.max_len), pool_(std::make_unique<ThreadPool>(options.num_threads)) {
  if (options.batch_size < 1)
    throw std::invalid_argument("batch_size must be >= 1, got " + std::to_string(options.batch_size));
  if (options.max_len < 1)
    throw std::invalid_argument("max_len must be >= 1, got " + std::to_string(options.max_len));
  episodes_.reserve(options.batch_size);
  for (int b = 0; b < options.batch_size; ++b) {
    std::vector<std::shared_ptr<Tool>> instances;
    for (const auto& make : tools) instances.push_back(make());
    episodes_.emplace_back(std::move(instances), options.protocol, options.max_len);
  }
}

void Env::check_tokens(const Tokens& tokens, const std::string& what) const {
  for (size_t j = 0; j < tokens.size(); ++j)
    if (tokens[j] < 0 || tokens[j] >= tok::kVocabSize)
      throw std::invalid_argument(what + "[" + std::to_string(j) + "] = " + std::to_string(tokens[j]) +
                                  " is not a token id in [0, " + std::to_string(tok::kVocabSize) + ")");
}

Tokens Env::reset(const std::vector<Tokens>& prompts, uint64_t seed) {
  if (static_cast<int>(prompts.size()) != batch_size())
    throw std::invalid_argument("prompts: expected batch_size = " + std::to_string(batch_size()) +
                                " prompts, got " + std::to_string(prompts.size()));
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::string what = "prompts[" + std::to_string(i) + "]";
    if (prompts[i].empty()) throw std::invalid_argument(what + " is empty (a prompt needs >= 1 token)");
    if (static_cast<int64_t>(prompts[i].size()) > max_len_)
      throw std::invalid_argument(what + " has " + std::to_string(prompts[i].size()) +
                                  " tokens, more than max_len = " + std::to_string(max_len_));
    check_tokens(prompts[i], what);
  }
  Tokens first(prompts.size());
  pool_->parallel_for(batch_size(), kStepGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) first[i] = episodes_[i].reset(prompts[i], mix_seed(seed, i));
  });
  return first;
}

void Env::step(const Tokens& sampled, Tokens* next, std::vector<uint8_t>* forced, std::vector<uint8_t>* done) {
  if (static_cast<int>(sampled.size()) != batch_size())
    throw std::invalid_argument("sampled: expected shape (" + std::to_string(batch_size()) + ",), got (" +
                                std::to_string(sampled.size()) + ",)");
  check_tokens(sampled, "sampled");
  next->resize(sampled.size());
  forced->resize(sampled.size());
  done->resize(sampled.size());
  pool_->parallel_for(batch_size(), kStepGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      bool was_forced;
      (*next)[i] = episodes_[i].step(sampled[i], &was_forced);
      (*forced)[i] = was_forced;
      (*done)[i] = episodes_[i].done();
    }
  });
}

void Env::replay(const std::vector<Tokens>& prompts, const std::vector<Tokens>& scripts, uint64_t seed) {
  if (scripts.size() != prompts.size())
    throw std::invalid_argument("model_tokens: expected one script per prompt (" + std::to_string(prompts.size()) +
                                "), got " + std::to_string(scripts.size()));
  for (size_t i = 0; i < scripts.size(); ++i) check_tokens(scripts[i], "model_tokens[" + std::to_string(i) + "]");
  reset(prompts, seed);
  // Whole episodes per task: each runs to its end independently, no per-step synchronisation.
  pool_->parallel_for(batch_size(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Episode& episode = episodes_[i];
      const Tokens& script = scripts[i];
      // Each model token is answered by a few forced tokens at most on the pointer tasks: room for
      // one each saves most regrowth of the transcript.
      episode.reserve(std::min<size_t>(max_len_, prompts[i].size() + 2 * script.size()));
      size_t used = 0;
      bool forced;
      while (!episode.done()) {
        if (episode.wants_sample()) {
          if (used == script.size()) break;
          episode.step(script[used++], &forced);
        } else {
          episode.step(tok::PAD, &forced);
        }
      }
    }
  });
}

void Env::rollout(const std::vector<Tokens>& prompts, int64_t max_steps, uint64_t seed,
                  const ModelStep& model_step) {
  if (max_steps < 0) throw std::invalid_argument("max_steps must be >= 0, got " + std::to_string(max_steps));
  Tokens input = reset(prompts, seed), sampled;
  std::vector<uint8_t> forced, done;
  for (int64_t s = 0; s < max_steps && !all_done(); ++s) {
    sampled.clear();
    model_step(input, &sampled);
    step(sampled, &input, &forced, &done);
  }
}

bool Env::all_done() const {
  return std::all_of(episodes_.begin(), episodes_.end(), [](const Episode& e) { return e.done(); });
}

}  // namespace ssm_tools
