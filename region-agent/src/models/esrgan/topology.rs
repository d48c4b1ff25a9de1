//! Checks a Keras topology (from a TF.js `model.json`) against the ESRGAN-slim network that
//! [`super::network::Rdn`] implements, and derives its [`RdnConfig`].
//!
//! The check is strict: every layer's class, name, inputs, kernel size, padding, activation
//! and (for the upsampling layer) interpolation must be exactly what the candle network
//! computes, so a package whose architecture changed is refused at conversion time instead of
//! producing wrong images.

use std::collections::BTreeMap;

use serde_json::Value;

use super::network::{KERNEL, RdnConfig, UPSAMPLE_KERNEL};

/// Why a topology is not the ESRGAN-slim network.
#[derive(Debug, thiserror::Error)]
#[error("model topology is not the ESRGAN-slim (RDN) network: {0}")]
pub struct TopologyError(String);

fn fail<T>(message: impl Into<String>) -> Result<T, TopologyError> {
    Err(TopologyError(message.into()))
}

/// One layer as the topology describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layer {
    class: String,
    name: String,
    inputs: Vec<String>,
    /// Conv2D: (filters, kernel). Other classes: None.
    conv: Option<(usize, usize)>,
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn usize_pair(v: Option<&Value>) -> Option<(usize, usize)> {
    let a = v?.as_array()?;
    match a.as_slice() {
        [x, y] => Some((x.as_u64()? as usize, y.as_u64()? as usize)),
        _ => None,
    }
}

/// Checks the per-class settings that the candle network hard-codes.
fn check_settings(class: &str, name: &str, cfg: &Value) -> Result<(), TopologyError> {
    let setting = |key: &str| cfg.get(key).cloned().unwrap_or(Value::Null);
    match class {
        "Conv2D" => {
            let kernel = usize_pair(cfg.get("kernel_size"));
            let ok = setting("strides") == serde_json::json!([1, 1])
                && setting("dilation_rate") == serde_json::json!([1, 1])
                && setting("activation") == "linear"
                && setting("use_bias") == true
                && str_field(cfg, "data_format").is_none_or(|f| f == "channels_last")
                && matches!(kernel, Some((k, k2)) if k == k2 && k % 2 == 1)
                && (setting("padding") == "same"
                    || (setting("padding") == "valid" && kernel == Some((1, 1))));
            if !ok {
                return fail(format!(
                    "Conv2D {name} has settings the network does not use"
                ));
            }
        }
        "Activation" if setting("activation") != "relu" => {
            return fail(format!("activation {name} is not relu"));
        }
        "UpSampling2D" if setting("interpolation") != "nearest" => {
            return fail(format!("upsampling {name} is not nearest-neighbour"));
        }
        "Concatenate"
            if !matches!(cfg.get("axis").and_then(Value::as_i64), None | Some(-1 | 3)) =>
        {
            return fail(format!("concatenation {name} is not along channels"));
        }
        _ => {}
    }
    Ok(())
}

fn parse_layers(topology: &Value) -> Result<Vec<Layer>, TopologyError> {
    let Some(layers) = topology
        .pointer("/model_config/config/layers")
        .and_then(Value::as_array)
    else {
        return fail("modelTopology.model_config.config.layers is missing");
    };
    let mut out = Vec::with_capacity(layers.len());
    for layer in layers {
        let cfg = layer.get("config").cloned().unwrap_or(Value::Null);
        let (Some(class), Some(name)) = (
            str_field(layer, "class_name"),
            str_field(layer, "name").or_else(|| str_field(&cfg, "name")),
        ) else {
            return fail("a layer has no class_name or name");
        };
        check_settings(class, name, &cfg)?;
        let inputs = layer
            .pointer("/inbound_nodes/0")
            .and_then(Value::as_array)
            .map(|node| {
                node.iter()
                    .filter_map(|input| input.get(0).and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let conv = (class == "Conv2D")
            .then(|| {
                let filters = cfg.get("filters").and_then(Value::as_u64)? as usize;
                Some((filters, usize_pair(cfg.get("kernel_size"))?.0))
            })
            .flatten();
        out.push(Layer {
            class: class.to_owned(),
            name: name.to_owned(),
            inputs,
            conv,
        });
    }
    Ok(out)
}

/// The layers the candle network computes for `cfg`, in Keras order.
fn expected_layers(cfg: &RdnConfig) -> Vec<Layer> {
    let mut layers = Vec::new();
    let mut push = |class: &str, name: &str, inputs: &[&str], conv: Option<(usize, usize)>| {
        layers.push(Layer {
            class: class.to_owned(),
            name: name.to_owned(),
            inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
            conv,
        });
    };
    let g0 = cfg.features;
    push("InputLayer", "LR", &[], None);
    push("Conv2D", "F_m1", &["LR"], Some((g0, KERNEL)));
    push("Conv2D", "F_0", &["F_m1"], Some((g0, KERNEL)));
    let mut block_in = "F_0".to_owned();
    let mut block_outputs = Vec::new();
    for d in 1..=cfg.blocks {
        let mut x = block_in.clone();
        for c in 1..=cfg.convs_per_block {
            let conv = RdnConfig::dense_conv_name(d, c);
            let relu = format!("{conv}_Relu");
            let concat = format!("RDB_Concat_{d}_{c}");
            push("Conv2D", &conv, &[&x], Some((cfg.growth, KERNEL)));
            push("Activation", &relu, &[&conv], None);
            push("Concatenate", &concat, &[&x, &relu], None);
            x = concat;
        }
        let fusion = RdnConfig::fusion_name(d);
        let out = format!("LRL_{d}");
        push("Conv2D", &fusion, &[&x], Some((g0, 1)));
        push("Add", &out, &[&fusion, &block_in], None);
        block_outputs.push(out.clone());
        block_in = out;
    }
    let outputs: Vec<&str> = block_outputs.iter().map(String::as_str).collect();
    push("Concatenate", "LRLs_Concat", &outputs, None);
    push("Conv2D", "GFF_1", &["LRLs_Concat"], Some((g0, 1)));
    push("Conv2D", "GFF_2", &["GFF_1"], Some((g0, KERNEL)));
    push("Add", "FDF", &["GFF_2", "F_m1"], None);
    let [u1, u2, u3] = cfg.upsample_features;
    push("Conv2D", "UPN1", &["FDF"], Some((u1, UPSAMPLE_KERNEL)));
    push("Activation", "UPN1_Relu", &["UPN1"], None);
    push("Conv2D", "UPN2", &["UPN1_Relu"], Some((u2, KERNEL)));
    push("Activation", "UPN2_Relu", &["UPN2"], None);
    push("Conv2D", "UPN3", &["UPN2_Relu"], Some((u3, KERNEL)));
    push("UpSampling2D", "UPsample", &["UPN3"], None);
    push("Conv2D", "SR", &["UPsample"], Some((3, KERNEL)));
    layers
}

/// Derives the network's hyper-parameters from the topology and checks that the topology is
/// exactly the network [`super::network::Rdn`] computes.
pub fn rdn_config_from_topology(topology: &Value) -> Result<RdnConfig, TopologyError> {
    let layers = parse_layers(topology)?;
    let by_name: BTreeMap<&str, &Layer> = layers.iter().map(|l| (l.name.as_str(), l)).collect();
    let filters = |name: &str| -> Result<usize, TopologyError> {
        match by_name.get(name).and_then(|l| l.conv) {
            Some((filters, _)) => Ok(filters),
            None => fail(format!("Conv2D layer {name} is missing")),
        }
    };
    let blocks = layers.iter().filter(|l| l.name.starts_with("LFF_")).count();
    let convs_per_block = layers
        .iter()
        .filter(|l| l.class == "Conv2D" && l.name.starts_with("F_1_"))
        .count();
    let scale = match layers.iter().find(|l| l.class == "UpSampling2D") {
        Some(l) => {
            let cfg = topology
                .pointer("/model_config/config/layers")
                .and_then(Value::as_array)
                .and_then(|all| all.iter().find(|v| str_field(v, "name") == Some(&l.name)))
                .and_then(|v| usize_pair(v.pointer("/config/size")));
            match cfg {
                Some((sy, sx)) if sy == sx && sy > 0 => sy,
                _ => return fail("UpSampling2D size must be square and positive"),
            }
        }
        None => return fail("no UpSampling2D layer"),
    };
    let cfg = RdnConfig {
        scale,
        features: filters("F_0")?,
        growth: filters("F_1_1")?,
        blocks,
        convs_per_block,
        upsample_features: [filters("UPN1")?, filters("UPN2")?, filters("UPN3")?],
    };
    let expected = expected_layers(&cfg);
    if expected.len() != layers.len() {
        return fail(format!(
            "{} layers, expected {} for {cfg:?}",
            layers.len(),
            expected.len()
        ));
    }
    for want in &expected {
        match by_name.get(want.name.as_str()) {
            Some(got) if *got == want => {}
            Some(got) => return fail(format!("layer {} is {got:?}, expected {want:?}", want.name)),
            None => return fail(format!("layer {} is missing", want.name)),
        }
    }
    Ok(cfg)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes the Keras topology of the network for `cfg`, as the TF.js converter would.
    pub(crate) fn keras_topology(cfg: &RdnConfig) -> Value {
        let layers: Vec<Value> = expected_layers(cfg)
            .into_iter()
            .map(|l| {
                let mut config = serde_json::json!({"name": l.name});
                if let Some((filters, k)) = l.conv {
                    config = serde_json::json!({
                        "name": l.name, "filters": filters, "kernel_size": [k, k],
                        "strides": [1, 1], "padding": if k == 1 { "valid" } else { "same" },
                        "data_format": "channels_last", "dilation_rate": [1, 1],
                        "activation": "linear", "use_bias": true,
                    });
                } else if l.class == "Activation" {
                    config["activation"] = "relu".into();
                } else if l.class == "UpSampling2D" {
                    config["size"] = serde_json::json!([cfg.scale, cfg.scale]);
                    config["interpolation"] = "nearest".into();
                }
                let inbound: Vec<Value> = l
                    .inputs
                    .iter()
                    .map(|i| serde_json::json!([i, 0, 0, {}]))
                    .collect();
                let nodes = if inbound.is_empty() {
                    serde_json::json!([])
                } else {
                    serde_json::json!([inbound])
                };
                serde_json::json!({
                    "class_name": l.class, "name": l.name, "config": config, "inbound_nodes": nodes,
                })
            })
            .collect();
        serde_json::json!({"model_config": {"class_name": "Functional", "config": {"layers": layers}}})
    }

    #[test]
    fn derives_config_from_a_matching_topology() {
        for cfg in [
            RdnConfig::slim(4),
            RdnConfig {
                convs_per_block: 2,
                blocks: 3,
                ..RdnConfig::slim(2)
            },
        ] {
            assert_eq!(
                rdn_config_from_topology(&keras_topology(&cfg)).unwrap(),
                cfg
            );
        }
    }

    #[test]
    fn refuses_a_changed_graph_or_setting() {
        let cfg = RdnConfig::slim(2);
        let mut rewired = keras_topology(&cfg);
        // Feed the global fusion's residual from F_0 instead of F_m1.
        let fdf = rewired
            .pointer_mut("/model_config/config/layers")
            .and_then(Value::as_array_mut)
            .and_then(|l| l.iter_mut().find(|l| l["name"] == "FDF"))
            .unwrap();
        fdf["inbound_nodes"][0][1][0] = "F_0".into();
        let err = rdn_config_from_topology(&rewired).unwrap_err();
        assert!(err.to_string().contains("layer FDF"), "{err}");

        let mut bilinear = keras_topology(&cfg);
        let up = bilinear
            .pointer_mut("/model_config/config/layers")
            .and_then(Value::as_array_mut)
            .and_then(|l| l.iter_mut().find(|l| l["name"] == "UPsample"))
            .unwrap();
        up["config"]["interpolation"] = "bilinear".into();
        let err = rdn_config_from_topology(&bilinear).unwrap_err();
        assert!(err.to_string().contains("nearest"), "{err}");
    }
}
