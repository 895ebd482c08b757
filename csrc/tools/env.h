// The batched dispatch loop: batch_size episodes, each with its own tool instances, advanced
// together one token per step (step/rollout) or each to its end (replay), in parallel over episodes.
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "tools/episode.h"
#include "tools/thread_pool.h"

namespace ssm_tools {

// Builds one tool instance (called batch_size times per tool slot).
using ToolFactory = std::function<std::shared_ptr<Tool>()>;

// The model: reads the batch's input tokens (B,), writes its samples (B,).
using ModelStep = std::function<void(const Tokens& input, Tokens* sampled)>;

struct EnvOptions {
  int batch_size = 1;
  int64_t max_len = int64_t{1} << 16;  // tokens per episode (prompt, model and forced tokens)
  int num_threads = 0;                 // 0: hardware concurrency
  ProtocolLimits protocol;
};

class Env {
 public:
  Env(const std::vector<ToolFactory>& tools, const EnvOptions& options);

  // Start every episode (prompts.size() == batch_size; each prompt non-empty, of valid token ids,
  // at most max_len long). Returns the first input token of each episode.
  Tokens reset(const std::vector<Tokens>& prompts, uint64_t seed);

  // One token per episode; see Episode::step. `sampled` must hold batch_size valid token ids.
  void step(const Tokens& sampled, Tokens* next, std::vector<uint8_t>* forced, std::vector<uint8_t>* done);

  // reset, then episode i emits scripts[i] in order whenever no forced token is queued, until [EOS],
  // max_len, or its script runs out.
  void replay(const std::vector<Tokens>& prompts, const std::vector<Tokens>& scripts, uint64_t seed);

  // reset, then up to max_steps steps of model_step + step, stopping early once every episode is done.
  void rollout(const std::vector<Tokens>& prompts, int64_t max_steps, uint64_t seed, const ModelStep& model_step);

  int batch_size() const { return static_cast<int>(episodes_.size()); }
  int num_threads() const { return pool_->num_threads(); }
  // Replace the thread pool (e.g. 1 thread when tools serialise on a lock such as Python's GIL).
  void set_num_threads(int num_threads) { pool_ = std::make_unique<ThreadPool>(num_threads); }
  const Episode& episode(int i) const { return episodes_.at(i); }
  bool all_done() const;

 private:
  void check_tokens(const Tokens& tokens, const std::string& what) const;

  std::vector<Episode> episodes_;
  int64_t max_len_;
  std::unique_ptr<ThreadPool> pool_;
};

}  // namespace ssm_tools
