// Unit tests of the protocol parser, episodes, the thread pool and the batched Env.
#include <atomic>
#include <stdexcept>

#include "tools/env.h"
#include "tools/tests/check.h"
#include "tools/text.h"
#include "tools/tool_registry.h"

using namespace ssm_tools;

namespace {

std::vector<ToolFactory> default_tools() {
  return {make_tool_factory("pointer_memory", {}), make_tool_factory("search_memory", {}),
          make_tool_factory("calculator", {})};
}

Tokens concat(std::initializer_list<Tokens> parts) {
  Tokens out;
  for (const Tokens& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

}  // namespace

TEST(parser_routes_and_answers) {
  ProtocolParser parser({make_tool_factory("pointer_memory", {})(), make_tool_factory("calculator", {})()}, {});
  parser.reset(text_to_tokens("ab"), 0);
  Tokens answer;
  CHECK(!parser.feed(tok::pointer_cmd(0, tok::kRead), &answer) && answer == text_to_tokens("a"));
  answer.clear();
  for (Token t : concat({{tok::CALL}, text_to_tokens("add 2 40"), {tok::CALL_END}})) parser.feed(t, &answer);
  CHECK(answer == concat({{tok::RESULT}, text_to_tokens("42"), {tok::RESULT_END}}));
  answer.clear();
  parser.feed(tok::RESULT_END, &answer);
  CHECK(answer == Tokens{tok::ERR});
  answer.clear();
  parser.feed(tok::CALL, &answer);
  parser.feed(tok::ANS, &answer);
  CHECK(answer.size() > 2 && answer[0] == tok::RESULT && answer[1] == tok::ERR && answer.back() == tok::RESULT_END);
  CHECK(parser.feed(tok::EOS, &answer));
}

TEST(episode_forces_prompt_then_answers) {
  Episode episode({make_tool_factory("pointer_memory", {})()}, {}, 100);
  const Tokens prompt = text_to_tokens("xy");
  CHECK(episode.reset(prompt, 1) == prompt[0]);
  bool forced;
  CHECK(episode.step(tok::ANS, &forced) == prompt[1] && forced);  // the sample is discarded
  CHECK(episode.wants_sample());
  CHECK(episode.step(tok::pointer_cmd(0, tok::kRead), &forced) == tok::pointer_cmd(0, tok::kRead) && !forced);
  CHECK(episode.step(tok::ANS, &forced) == prompt[0] && forced);
  CHECK(episode.step(tok::EOS, &forced) == tok::EOS && !forced && episode.done());
  CHECK(episode.step(tok::ANS, &forced) == tok::PAD && episode.done());
  CHECK((episode.generated() == std::vector<uint8_t>{0, 0, 1, 0, 1}));
}

TEST(thread_pool_covers_range_and_rethrows) {
  for (int threads : {1, 3}) {
    ThreadPool pool(threads);
    std::vector<std::atomic<int>> hits(1000);
    pool.parallel_for(1000, 7, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) ++hits[i];
    });
    bool once = true;
    for (auto& h : hits) once = once && h == 1;
    CHECK(once);
    CHECK_THROWS(std::runtime_error, pool.parallel_for(100, 1, [](int64_t b, int64_t e) {
      if (b <= 42 && 42 < e) throw std::runtime_error("boom");
    }));
    int64_t after = 0;  // the pool still works after an exception
    pool.parallel_for(10, 1, [&](int64_t b, int64_t e) { if (b == 0) after = e; });
    CHECK(after >= 1);
  }
}

TEST(env_replay_matches_steps_across_threads) {
  const int batch = 50;
  std::vector<Tokens> prompts, scripts;
  for (int i = 0; i < batch; ++i) {
    prompts.push_back(text_to_tokens(std::to_string(i * 37) + "+" + std::to_string(i) + "="));
    scripts.push_back(concat({{tok::pointer_cmd(0, tok::kRight), tok::pointer_cmd(0, tok::kRead), tok::CALL},
                              text_to_tokens("add " + std::to_string(i * 37) + " " + std::to_string(i)),
                              {tok::CALL_END, tok::ANS}, text_to_tokens(std::to_string(i * 38)), {tok::EOS}}));
  }
  EnvOptions options;
  options.batch_size = batch;
  options.num_threads = 4;
  Env replayed(default_tools(), options);
  replayed.replay(prompts, scripts, 9);
  options.num_threads = 1;
  Env stepped(default_tools(), options);
  Tokens input = stepped.reset(prompts, 9), sampled(batch);
  std::vector<size_t> cursor(batch, 0);
  std::vector<uint8_t> forced, done;
  while (!stepped.all_done()) {
    std::vector<uint8_t> wants(batch);
    for (int i = 0; i < batch; ++i) {
      wants[i] = stepped.episode(i).wants_sample();
      sampled[i] = cursor[i] < scripts[i].size() ? scripts[i][cursor[i]] : tok::EOS;
    }
    stepped.step(sampled, &input, &forced, &done);
    for (int i = 0; i < batch; ++i) cursor[i] += wants[i];
  }
  for (int i = 0; i < batch; ++i) {
    CHECK(replayed.episode(i).tokens() == stepped.episode(i).tokens());
    CHECK(replayed.episode(i).generated() == stepped.episode(i).generated());
    CHECK(replayed.episode(i).done());
  }
}

TEST(env_rejects_bad_input) {
  EnvOptions options;
  options.batch_size = 2;
  options.max_len = 4;
  Env env(default_tools(), options);
  CHECK_THROWS(std::invalid_argument, env.reset({{tok::ANS}}, 0));
  CHECK_THROWS(std::invalid_argument, env.reset({{tok::ANS}, {}}, 0));
  CHECK_THROWS(std::invalid_argument, env.reset({{tok::ANS}, {-1}}, 0));
  CHECK_THROWS(std::invalid_argument, env.reset({{tok::ANS}, Tokens(5, tok::ANS)}, 0));
  env.reset({{tok::ANS}, {tok::ANS}}, 0);
  Tokens next;
  std::vector<uint8_t> forced, done;
  CHECK_THROWS(std::invalid_argument, env.step({tok::ANS}, &next, &forced, &done));
  CHECK_THROWS(std::invalid_argument, env.step({tok::ANS, tok::kVocabSize}, &next, &forced, &done));
  options.batch_size = 0;
  CHECK_THROWS(std::invalid_argument, Env(default_tools(), options));
}
