import torch, time, statistics as st, sys
from ditflow_fast import compute_amf, _native
torch.manual_seed(0)
H,d,F,h,w,txt = 48,64,4,15,22,226
N=F*h*w; T=N+txt
q=torch.randn(1,H,T,d); k=torch.randn(1,H,T,d)
qt=torch.randn(1,T,H,d).permute(0,2,1,3); kt=torch.randn(1,T,H,d).permute(0,2,1,3)   # [B,T,H,d] buffers
qc=q[:,:,txt:].permute(0,2,1,3).reshape(1,N,H*d).contiguous(); kc=k[:,:,txt:].permute(0,2,1,3).reshape(1,N,H*d).contiguous()
ops=_native.ops()
kw=dict(frames=F,height=h,width=w,text_tokens=txt,mode="soft",backend="cpu")
fs={"gemm":lambda: torch.mm(qc[0],kc[0].t()),
    "kernel_alone":lambda: ops.amf_forward(qc,kc,F,h,w,0.3,True),
    "compute_amf_bhtd":lambda: compute_amf(q,k,**kw),
    "compute_amf_bthd_view":lambda: compute_amf(qt,kt,**kw),
    "torch_backend_bhtd":lambda: compute_amf(q,k,**{**kw,"backend":"torch"})}
res={n:[] for n in fs}
for r in range(int(sys.argv[1])):
    for n,f in fs.items():
        t=time.perf_counter(); f(); res[n].append(time.perf_counter()-t)
for n,v in res.items(): print(f"{n:22s} median {st.median(v)*1e3:7.2f} ms  paired/gemm {st.median([x/g for x,g in zip(v,res['gemm'])]):.3f}")
