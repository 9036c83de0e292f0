"""A Google-format BERT dir with random weights, for tests that need a real (small) encoder."""

import shutil


def write_random_bert(out_dir, config, vocab_path):
  """`out_dir` as a BERT dir: `config` (a modeling.BertConfig), the vocab at `vocab_path` and a
  checkpoint of random weights (seed 0); returns `out_dir`."""
  import tensorflow.compat.v1 as tf

  from bert_ner import backbone, modeling

  (out_dir / "bert_config.json").write_text(config.to_json_string(), encoding="utf-8")
  shutil.copyfile(vocab_path, out_dir / "vocab.txt")
  with tf.Graph().as_default():
    tf.set_random_seed(0)
    input_ids = tf.placeholder(tf.int32, [None, None])
    modeling.BertModel(config, False, input_ids, tf.ones_like(input_ids))
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      tf.train.Saver().save(
        sess, str(out_dir / backbone.CHECKPOINT_NAME), write_meta_graph=False, write_state=False
      )
  return out_dir
