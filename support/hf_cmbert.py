"""
cmbert for Hugging Face transformers: its configuration and model interfaces around cmbert.py.

CMBert.save_hf copies this file and cmbert.py into an export folder of an RMSNorm model (the
paper's choice, which transformers' own ModernBERT lacks). transformers then loads that folder
with trust_remote_code=True, importing this file as part of a package, so `from .cmbert import`
finds the copy of cmbert.py beside it:

    from transformers import AutoModelForMaskedLM, PreTrainedTokenizerFast, pipeline
    tok = PreTrainedTokenizerFast.from_pretrained("hf_out")  # a plain tokenizer: no code
    model = AutoModelForMaskedLM.from_pretrained("hf_out", trust_remote_code=True)
    pipeline("fill-mask", model=model, tokenizer=tok)("北京是中国的[MASK]都。")

Nothing here computes anything of its own: the modules are cmbert.py's Encoder and Head, the
forward passes are cmbert.py's, called on these objects, and the weight names are the same as in
cmbert's model.safetensors. Only the output types (ModelOutput) and the loss conventions are
transformers'.
"""
from dataclasses import fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput

# Only ever imported inside an export folder, where transformers imports this file and the copy of
# cmbert.py beside it as one package; the repository itself never imports it (it would be an import
# back up, from a support module to a lecture file).
from .cmbert import CMBert, CMBertConfig, CMBertForSequenceClassification, Encoder, Head


class HFCMBertConfig(PretrainedConfig):
    """CMBertConfig's fields as a transformers config (plus transformers' own: num_labels, ...)."""
    model_type = "cmbert"
    # the names transformers' utilities look for (pipelines, Trainer, PEFT)
    attribute_map = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
                     "max_position_embeddings": "max_seq_len"}

    def __init__(self, **kwargs):
        own = CMBertConfig(**{f.name: kwargs.pop(f.name) for f in fields(CMBertConfig) if f.name in kwargs})
        for f in fields(CMBertConfig):
            setattr(self, f.name, getattr(own, f.name))
        for name, value in [("pad_token_id", own.pad_id), ("cls_token_id", own.cls_id), ("sep_token_id", own.sep_id),
                            ("mask_token_id", own.mask_id)]:
            kwargs.setdefault(name, value)
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(**kwargs)

    def cmbert(self):
        """The CMBertConfig that cmbert.py's modules are built from."""
        return CMBertConfig(**{f.name: getattr(self, f.name) for f in fields(CMBertConfig)})


class HFCMBertPreTrainedModel(PreTrainedModel):
    config_class = HFCMBertConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.cfg = config.cmbert()  # what cmbert.py's forward passes read

    @torch.no_grad()
    def _init_weights(self, module):
        """Only for weights a folder does not hold (a new classifier): cmbert's init, see
        PreTrained.init_weights (truncated normal at +-2 sigma, norms at 1, biases at 0)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = self.cfg.n_embd ** -0.5 if module is getattr(self, "classifier", None) else 0.02
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self):
        return self.model.embeddings.tok_embeddings

    def set_input_embeddings(self, value):
        self.model.embeddings.tok_embeddings = value


class HFCMBertModel(HFCMBertPreTrainedModel):
    """The encoder alone: last_hidden_state (B, T, n_embd), e.g. for sentence embeddings."""
    # an export holds the masked-LM model: the encoder alone leaves its head out, by design, so
    # loading does not report those weights as unexpected (sentence-transformers loads this class)
    _keys_to_ignore_on_load_unexpected = [r"^head\.", r"^decoder\."]

    def __init__(self, config):
        super().__init__(config)
        self.model = Encoder(self.cfg)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, return_dict=None, **kwargs):
        h = self.model(input_ids, attention_mask)
        return BaseModelOutput(last_hidden_state=h) if return_dict is not False else (h,)


class HFCMBertForMaskedLM(HFCMBertPreTrainedModel):
    """Encoder + MLM head (decoder tied to the token embedding): logits (B, T, vocab_size)."""
    _tied_weights_keys = {"decoder.weight": "model.embeddings.tok_embeddings.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = Encoder(self.cfg)
        self.head = Head(self.cfg)
        self.decoder = nn.Linear(self.cfg.n_embd, self.cfg.vocab_size, bias=True)
        self.post_init()

    def get_output_embeddings(self):
        return self.decoder

    def set_output_embeddings(self, value):
        self.decoder = value

    def forward(self, input_ids, attention_mask=None, labels=None, return_dict=None, **kwargs):
        logits, _ = CMBert.forward(self, input_ids, attention_mask)  # cmbert's forward, dense logits
        loss = None
        if labels is not None:  # transformers' convention: labels (B, T), -100 = not scored
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1), ignore_index=-100)
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return MaskedLMOutput(loss=loss, logits=logits)


class HFCMBertForSequenceClassification(HFCMBertPreTrainedModel):
    """Encoder + ModernBERT's classification head (pooling per config.classifier_pooling)."""
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = Encoder(self.cfg)
        self.head = Head(self.cfg)
        self.drop = nn.Dropout(self.cfg.classifier_dropout)
        self.classifier = nn.Linear(self.cfg.n_embd, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, labels=None, return_dict=None, **kwargs):
        logits, _ = CMBertForSequenceClassification.forward(self, input_ids, attention_mask)
        loss = None
        if labels is not None:  # transformers' problem types: regression, one label, several labels
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            elif labels.dtype in (torch.long, torch.int):
                loss = F.cross_entropy(logits.float(), labels)
            else:
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return SequenceClassifierOutput(loss=loss, logits=logits)
